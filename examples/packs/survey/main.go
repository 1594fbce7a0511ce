//go:build wasip1

// Command survey is a multi-turn pack: it asks three questions, parking the flow with a
// session wait between them, and answers with every reply it collected.
package main

import (
	"bytes"
	"strconv"

	"github.com/packhost/packhost/sdk/go/packhost"
)

var questions = []string{"What is your name?", "What do you build?", "How should we reach you?"}

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		// WaitData holds the answers so far, one per line, each raw JSON.
		var answers [][]byte
		if a.Resumed && len(a.WaitData) > 0 {
			answers = bytes.Split(a.WaitData, []byte{'\n'})
		}
		if a.Resumed {
			answers = append(answers, bytes.ReplaceAll(a.Payload, []byte{'\n'}, nil))
		}
		if len(answers) < len(questions) {
			q := questions[len(answers)]
			if err := packhost.Wait(bytes.Join(answers, []byte{'\n'}), 0); err != nil {
				return err
			}
			return packhost.Reply([]byte(`{"question":` + strconv.Quote(q) + `,"step":` + strconv.Itoa(len(answers)+1) + `}`))
		}
		out := []byte(`{"done":true,"answers":[`)
		out = append(out, bytes.Join(answers, []byte{','})...)
		return packhost.Reply(append(out, "]}"...))
	})
}

func main() {}
