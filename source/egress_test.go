package source_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/packhost/packhost/source"
)

func policy(t testing.TB, allow, deny []string) *source.EgressPolicy {
	t.Helper()
	p, err := source.NewEgressPolicy(allow, deny)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The classifier judges the address a connection is about to be made to; every spelling
// of an internal address that a resolver or dialer may produce is refused by default.
func TestEgressPolicyDefault(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		allow bool
	}{
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"::ffff:127.0.0.1", false}, // IPv4-mapped IPv6
		{"::1", false},
		{"0.0.0.0", false}, // connects to the local host on Linux
		{"0.1.2.3", false},
		{"::", false},
		{"169.254.169.254", false}, // cloud metadata
		{"::ffff:169.254.169.254", false},
		{"fd00:ec2::254", false}, // AWS metadata over IPv6 (ULA)
		{"fe80::1%eth0", false},
		{"10.0.0.1", false},
		{"10.255.255.255", false},
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"192.168.1.1", false},
		{"100.64.0.1", false}, // shared address space, some pod networks
		{"fc00::1", false},
		{"fdff:ffff::1", false},
		{"224.0.0.1", false},
		{"239.255.255.250", false},
		{"255.255.255.255", false},
		{"ff02::1", false},
		{"64:ff9b::7f00:1", false},                      // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", false},                   // NAT64 of 169.254.169.254
		{"2002:7f00:1::1", false},                       // 6to4 of 127.0.0.1
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", false}, // Teredo
		{"::7f00:1", false},                             // IPv4-compatible 127.0.0.1
		{"172.32.0.1", true},
		{"172.15.255.255", true},
		{"100.128.0.1", true},
		{"8.8.8.8", true},
		{"::ffff:8.8.8.8", true},
		{"64:ff9b::808:808", true}, // NAT64 of 8.8.8.8, for IPv6-only clusters
		{"2606:4700:4700::1111", true},
		{"140.82.112.3", true},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			for _, p := range []*source.EgressPolicy{nil, {}, policy(t, nil, nil)} {
				if got := p.AllowsAddr(netip.MustParseAddr(tc.addr)); got != tc.allow {
					t.Errorf("AllowsAddr(%s) = %v, want %v", tc.addr, got, tc.allow)
				}
			}
		})
	}
	if (*source.EgressPolicy)(nil).AllowsAddr(netip.Addr{}) {
		t.Error("the invalid address is allowed")
	}
}

// The operator's entries beat the built-in list; among them the most specific wins and
// a tie goes to deny.
func TestEgressPolicyOperatorEntries(t *testing.T) {
	for _, tc := range []struct {
		name        string
		allow, deny []string
		addr        string
		want        bool
	}{
		{"allowed address", []string{"127.0.0.1/32"}, nil, "127.0.0.1", true},
		{"allowed address, mapped form", []string{"127.0.0.1/32"}, nil, "::ffff:127.0.0.1", true},
		{"allowed as bare address", []string{"127.0.0.1"}, nil, "127.0.0.1", true},
		{"allowed as mapped CIDR", []string{"::ffff:127.0.0.1/128"}, nil, "127.0.0.1", true},
		{"neighbour of an allowed address", []string{"127.0.0.1/32"}, nil, "127.0.0.2", false},
		{"other private ranges stay refused", []string{"127.0.0.1/32"}, nil, "10.0.0.1", false},
		{"allowed range", []string{"10.0.0.0/8"}, nil, "10.1.2.3", true},
		{"service range inside an allowed range", []string{"10.0.0.0/8"}, []string{"10.96.0.0/12"}, "10.96.0.10", false},
		{"registry inside a denied service range", []string{"10.96.0.10/32"}, []string{"10.96.0.0/12"}, "10.96.0.10", true},
		{"tie goes to deny", []string{"10.96.0.0/12"}, []string{"10.96.0.0/12"}, "10.96.0.10", false},
		{"public pod range denied", nil, []string{"34.64.0.0/10"}, "34.65.1.2", false},
		{"public address outside it", nil, []string{"34.64.0.0/10"}, "34.128.1.2", true},
		{"IPv6 pod range denied", nil, []string{"2600:1900::/28"}, "2600:1900::5", false},
		{"allowed ULA", []string{"fd00::/8"}, nil, "fd00::1", true},
		{"host entries allow no address", []string{"registry.internal"}, nil, "10.0.0.1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := policy(t, tc.allow, tc.deny).AllowsAddr(netip.MustParseAddr(tc.addr)); got != tc.want {
				t.Errorf("allow %v deny %v: AllowsAddr(%s) = %v, want %v", tc.allow, tc.deny, tc.addr, got, tc.want)
			}
		})
	}
}

func TestEgressPolicyHosts(t *testing.T) {
	p := policy(t, []string{"Registry.Internal.", "127.0.0.1/32"}, nil)
	for host, want := range map[string]bool{
		"registry.internal": true, "REGISTRY.internal": true, "registry.internal.": true,
		"evil.registry.internal": false, "registry.internal.evil": false, "127.0.0.1": false, "": false,
	} {
		if got := p.AllowsHost(host); got != want {
			t.Errorf("AllowsHost(%q) = %v, want %v", host, got, want)
		}
	}
	if (*source.EgressPolicy)(nil).AllowsHost("registry.internal") {
		t.Error("the default policy allows a host name")
	}
}

func TestNewEgressPolicyRefusesBadEntries(t *testing.T) {
	for _, tc := range []struct {
		allow, deny []string
		want        string
	}{
		{allow: []string{"10.0.0.0/33"}, want: "not a CIDR"},
		{allow: []string{"http://registry.internal"}, want: "want a CIDR"},
		{allow: []string{"registry.internal:5000"}, want: "without a port"},
		{allow: []string{"reg istry"}, want: "want a CIDR"},
		{allow: []string{"-bad.example"}, want: "want a CIDR"},
		{deny: []string{"registry.internal"}, want: "want a CIDR"},
		{deny: []string{"10.96.0.0/99"}, want: "not a CIDR"},
	} {
		_, err := source.NewEgressPolicy(tc.allow, tc.deny)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewEgressPolicy(%q, %q) = %v, want an error saying %q", tc.allow, tc.deny, err, tc.want)
		}
	}
	if _, err := source.NewEgressPolicy([]string{" 127.0.0.1/32", "", "::1", "registry.internal", "my_host.local"}, []string{"10.96.0.0/12 ", "fd00::/8"}); err != nil {
		t.Errorf("valid entries refused: %v", err)
	}
}

// FuzzEgressPolicy checks the classifier against the standard library's own judgement
// of addresses: whatever the default policy allows is none of the kinds netip names as
// internal, in any of its spellings (IPv4, IPv4-mapped IPv6, with a zone).
func FuzzEgressPolicy(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "::", "169.254.169.254", "10.0.0.1", "8.8.8.8", "fe80::1", "64:ff9b::7f00:1"} {
		a := netip.MustParseAddr(s).As16()
		f.Add(a[:])
	}
	var p *source.EgressPolicy
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != 16 {
			return
		}
		a := netip.AddrFrom16([16]byte(b))
		got := p.AllowsAddr(a)
		for _, form := range []netip.Addr{a.Unmap(), a.WithZone("eth0"), netip.AddrFrom16(a.Unmap().As16())} {
			if p.AllowsAddr(form) != got {
				t.Fatalf("AllowsAddr(%s) = %v but AllowsAddr(%s) = %v", a, got, form, !got)
			}
		}
		u := a.Unmap()
		if got && (u.IsLoopback() || u.IsPrivate() || u.IsUnspecified() || u.IsMulticast() || u.IsLinkLocalUnicast() || u.IsLinkLocalMulticast() || u.IsInterfaceLocalMulticast()) {
			t.Fatalf("AllowsAddr(%s) = true for an internal address", a)
		}
		if got && u.Is4() && u.As4()[0] == 0 {
			t.Fatalf("AllowsAddr(%s) = true for 0.0.0.0/8", a)
		}
	})
}
