//go:build wasip1

// Command identify is a test pack for identify and describe-identify, well behaved or
// hostile as the revision's config says. Its manifest allowlists the environment
// variable PROBE; copies of it under other manifests allowlist others (PROBE_A, …), so
// that packs of one revision behave differently. It reads the first variable it sees
// whose name starts with PROBE: space-separated settings
//
//	describe=none|hint:<name>+<name>…|trap|loop|garbage|huge|unbound
//	hinttypes=<type>+<type>…    (the types describe=hint: answers; probe+other)
//	identify=echo|nomatch|trap|loop|garbage
//
// (defaults describe=none identify=echo). identify=echo answers Identified with
// provider_id the headers it received, "name=value" joined by ";", in order. Every call
// logs "describe" or "identify <type>", so a test can count them.
package main

import (
	"os"
	"strings"

	"github.com/packhost/packhost/sdk/go/packhost"
)

func setting(key, def string) string {
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PROBE") {
			continue
		}
		_, v, _ := strings.Cut(kv, "=")
		for _, f := range strings.Fields(v) {
			if k, val, ok := strings.Cut(f, "="); ok && k == key {
				return val
			}
		}
	}
	return def
}

func spin() {
	for {
	}
}

func init() {
	packhost.HandleDescribeIdentify(func() []packhost.Hint {
		packhost.Log("describe")
		mode := setting("describe", "none")
		switch {
		case mode == "trap":
			panic("identify pack: describe traps")
		case mode == "loop":
			spin()
		case mode == "garbage":
			_ = packhost.Output("hint", []byte(`[1,2,3]`))
			return nil
		case mode == "huge":
			// One hint of 4,096 header names, 80 KiB: within the output limit, past
			// what the host keeps of a pack's hints.
			names := make([]string, 4096)
			for i := range names {
				names[i] = "x-header-" + strings.Repeat("n", 8)
			}
			return []packhost.Hint{{ProviderType: "probe", Headers: names}}
		case mode == "unbound":
			return []packhost.Hint{{ProviderType: "not-bound", Headers: []string{"x-a"}}}
		case strings.HasPrefix(mode, "hint:"):
			var names []string
			if list := strings.TrimPrefix(mode, "hint:"); list != "" {
				names = strings.Split(list, "+")
			}
			var hints []packhost.Hint
			for _, t := range strings.Split(setting("hinttypes", "probe+other"), "+") {
				hints = append(hints, packhost.Hint{ProviderType: t, Headers: names})
			}
			return hints
		}
		return nil
	})
	packhost.HandleIdentify(func(req *packhost.IdentifyRequest) (*packhost.Identity, error) {
		packhost.Log("identify " + req.ProviderType)
		switch setting("identify", "echo") {
		case "nomatch":
			return nil, nil
		case "trap":
			panic("identify pack: identify traps")
		case "loop":
			spin()
		case "garbage":
			_ = packhost.Output("identified", []byte(`"not an identity"`))
			return nil, nil
		}
		seen := make([]string, len(req.HeaderList))
		for i, h := range req.HeaderList {
			seen[i] = h.Name + "=" + h.Value
		}
		return &packhost.Identity{ProviderID: strings.Join(seen, ";"), EndpointID: req.Headers["x-a"]}, nil
	})
	packhost.Handle(func(a *packhost.Activity) error { return packhost.Reply(nil) })
}

func main() {}
