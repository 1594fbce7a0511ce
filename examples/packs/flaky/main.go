//go:build wasip1

// Command flaky is a pack that replies with the payload it was sent, like echo, but
// fails a share of its activities with a guest error (502 guest_error): the canary that
// a rollout's analysis must catch. The Revision's config sets the share:
//
//	config:
//	  errorPercent: "30"   # 0 to 100; absent means 0
//
// Which activities fail is decided by a hash of the activity (session key, flow and
// payload), not by chance or by a counter: the same activity always gets the same
// answer, on any replica and any instance, so a test can count on it; distinct
// activities fail in the configured share. A config that is not a whole number from 0
// to 100 fails every activity with an error that says so.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"

	"github.com/packhost/packhost/sdk/go/packhost"
)

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		p, err := errorPercent(a.Config)
		if err != nil {
			return err
		}
		if fails(a, p) {
			return errors.New("flaky: failing this activity on purpose")
		}
		return packhost.Reply(a.Payload)
	})
}

// parsed caches the last config's errorPercent: a revision's config never changes, so
// an instance parses it once.
var parsed struct {
	config  string
	percent uint64
}

// errorPercent reads config's errorPercent.
func errorPercent(config []byte) (uint64, error) {
	if parsed.config != "" && parsed.config == string(config) {
		return parsed.percent, nil
	}
	var c struct {
		ErrorPercent string `json:"errorPercent"`
	}
	if len(config) > 0 {
		if err := json.Unmarshal(config, &c); err != nil {
			return 0, fmt.Errorf("flaky: read config: %w", err)
		}
	}
	var p uint64
	if c.ErrorPercent != "" {
		var err error
		if p, err = strconv.ParseUint(c.ErrorPercent, 10, 8); err != nil || p > 100 {
			return 0, fmt.Errorf("flaky: config errorPercent %q is not a whole number from 0 to 100", c.ErrorPercent)
		}
	}
	parsed.config, parsed.percent = string(config), p
	return p, nil
}

// fails says whether activity a is one of the percent in 100 that fail.
func fails(a *packhost.Activity, percent uint64) bool {
	h := fnv.New64a()
	for _, part := range [][]byte{[]byte(a.SessionKey), []byte(a.FlowID), a.Payload} {
		h.Write(part)
		h.Write([]byte{0})
	}
	return h.Sum64()%100 < percent
}

func main() {}
