package runtime_test

import (
	"errors"
	"testing"

	"github.com/packhost/packhost/runtime"
)

func TestSelectFlow(t *testing.T) {
	mk := func(id string, flows ...runtime.Flow) *runtime.Pack {
		return &runtime.Pack{Manifest: &runtime.Manifest{ABI: 1, PackID: id, Flows: flows}}
	}
	main := mk("main",
		runtime.Flow{ID: "secret", Type: "message", Entry: true, Tags: []string{"internal"}},
		runtime.Flow{ID: "chat", Type: "message", Entry: true},
		runtime.Flow{ID: "billing", Type: "custom", Entry: true},
		runtime.Flow{ID: "followup", Type: "message"},
	)
	overlay := mk("overlay",
		runtime.Flow{ID: "hook", Type: "webhook", Entry: true},
		runtime.Flow{ID: "billing2", Type: "custom", Entry: true},
	)
	packs := []*runtime.Pack{main, overlay}
	cases := []struct {
		name       string
		a          runtime.Activity
		pack, flow string
		err        error
	}{
		{"default is the main pack's first entry flow, skipping internal", runtime.Activity{}, "main", "chat", nil},
		{"explicit flow id", runtime.Activity{FlowID: "followup"}, "main", "followup", nil},
		{"explicit flow id in an overlay", runtime.Activity{FlowID: "hook"}, "overlay", "hook", nil},
		{"internal flow never entered by id", runtime.Activity{FlowID: "secret"}, "", "", runtime.ErrNoSuchFlow},
		{"unknown flow id", runtime.Activity{FlowID: "nope"}, "", "", runtime.ErrNoSuchFlow},
		{"unique entry flow of a type", runtime.Activity{FlowType: "webhook"}, "overlay", "hook", nil},
		{"type whose only other flow is internal or not an entry", runtime.Activity{FlowType: "message"}, "main", "chat", nil},
		{"ambiguous type", runtime.Activity{FlowType: "custom"}, "", "", runtime.ErrNoSuchFlow},
		{"pack hint disambiguates a type", runtime.Activity{FlowType: "custom", PackID: "overlay"}, "overlay", "billing2", nil},
		{"pack hint picks that pack's first entry flow", runtime.Activity{PackID: "overlay"}, "overlay", "hook", nil},
		{"unknown pack hint", runtime.Activity{PackID: "ghost"}, "", "", runtime.ErrNoSuchFlow},
		{"no entry flow of the type", runtime.Activity{FlowType: "sms"}, "", "", runtime.ErrNoSuchFlow},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pack, flow, err := runtime.SelectFlow(packs, &tc.a)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %s/%s %v, want %v", pack, flow, err, tc.err)
				}
				return
			}
			if err != nil || pack != tc.pack || flow != tc.flow {
				t.Fatalf("got %s/%s %v, want %s/%s", pack, flow, err, tc.pack, tc.flow)
			}
		})
	}
}
