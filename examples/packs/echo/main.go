//go:build wasip1

// Command echo is a pack that replies with the payload it was sent.
package main

import "github.com/packhost/packhost/sdk/go/packhost"

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		return packhost.Reply(a.Payload)
	})
}

func main() {}
