package source

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
)

// EgressPolicy decides which addresses a pack source (url or image, and every redirect
// and registry token endpoint they lead to) may connect to. It is checked on every
// connection at connect time, on the address actually dialed, so DNS answers, DNS
// rebinding, redirects and odd spellings of an address (decimal, hex, IPv4-mapped IPv6)
// are judged by what they resolve to.
//
// By default every address in reservedPrefixes is refused: loopback, "this network"
// (0.0.0.0/8, ::), private (RFC 1918, shared 100.64.0.0/10, IPv6 ULA fc00::/7),
// link-local (169.254.0.0/16 with cloud metadata services, fe80::/10), multicast,
// broadcast and reserved ranges, and IPv6 forms that embed one of those. The operator
// adds to it:
//   - allowed CIDRs or addresses (--source-allow=127.0.0.1/32), for a registry on a
//     private address;
//   - allowed host names (--source-allow=registry.internal): a connection to that exact
//     name may go to any address it resolves to;
//   - denied CIDRs (--source-deny=10.96.0.0/12,10.244.0.0/16), for the cluster's service
//     and pod ranges, which vary per cluster and may be public addresses.
//
// The operator's CIDRs beat the built-in list; among them the most specific prefix that
// holds the address wins, and a tie goes to deny. An allowed host name beats every CIDR.
// The zero value and nil are the default policy.
type EgressPolicy struct {
	allow []netip.Prefix
	deny  []netip.Prefix
	hosts map[string]bool
}

// NewEgressPolicy builds a policy from the operator's allow entries (CIDRs, addresses or
// host names) and deny entries (CIDRs or addresses).
func NewEgressPolicy(allow, deny []string) (*EgressPolicy, error) {
	p := &EgressPolicy{hosts: map[string]bool{}}
	for _, e := range allow {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if pr, ok, err := parsePrefix(e); err != nil {
			return nil, fmt.Errorf("egress allow entry %q: %w", e, err)
		} else if ok {
			p.allow = append(p.allow, pr)
			continue
		}
		h, err := parseHostName(e)
		if err != nil {
			return nil, fmt.Errorf("egress allow entry %q: %w", e, err)
		}
		p.hosts[h] = true
	}
	for _, e := range deny {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		pr, ok, err := parsePrefix(e)
		if err == nil && !ok {
			err = fmt.Errorf("want a CIDR such as 10.96.0.0/12 or an IP address")
		}
		if err != nil {
			return nil, fmt.Errorf("egress deny entry %q: %w", e, err)
		}
		p.deny = append(p.deny, pr)
	}
	return p, nil
}

// parsePrefix reads a CIDR or a single address; ok is false for anything that is
// neither and does not look like one (a host name).
func parsePrefix(s string) (netip.Prefix, bool, error) {
	if strings.Contains(s, "://") {
		return netip.Prefix{}, false, fmt.Errorf("want a CIDR, an IP address or a host name without a port or scheme")
	}
	if strings.Contains(s, "/") {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false, fmt.Errorf("not a CIDR: %w", err)
		}
		return canonical(pr), true, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.WithZone("")
		return canonical(netip.PrefixFrom(a, a.BitLen())), true, nil
	}
	if strings.Contains(s, ":") {
		return netip.Prefix{}, false, fmt.Errorf("want a CIDR, an IP address or a host name without a port or scheme")
	}
	return netip.Prefix{}, false, nil
}

// canonical masks a prefix and writes an IPv4-mapped IPv6 prefix as the IPv4 one, since
// addresses are unmapped before they are matched.
func canonical(pr netip.Prefix) netip.Prefix {
	if a := pr.Addr(); a.Is4In6() && pr.Bits() >= 96 {
		pr = netip.PrefixFrom(a.Unmap(), pr.Bits()-96)
	}
	return pr.Masked()
}

func parseHostName(s string) (string, error) {
	h := strings.TrimSuffix(strings.ToLower(s), ".")
	if h == "" || len(h) > 253 {
		return "", fmt.Errorf("want a CIDR, an IP address or a host name")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("want a CIDR, an IP address or a host name")
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("want a CIDR, an IP address or a host name")
			}
		}
	}
	return h, nil
}

// AllowsHost reports whether host is one of the operator's allowed host names.
func (p *EgressPolicy) AllowsHost(host string) bool {
	if p == nil || len(p.hosts) == 0 {
		return false
	}
	return p.hosts[strings.TrimSuffix(strings.ToLower(host), ".")]
}

// AllowsAddr reports whether a connection to ip may be made (when the name dialed is not
// an allowed host name).
func (p *EgressPolicy) AllowsAddr(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.WithZone("").Unmap()
	if p != nil {
		best, allowed := -1, false
		for _, pr := range p.allow {
			if pr.Contains(ip) && pr.Bits() > best {
				best, allowed = pr.Bits(), true
			}
		}
		for _, pr := range p.deny {
			if pr.Contains(ip) && pr.Bits() >= best {
				best, allowed = pr.Bits(), false
			}
		}
		if best >= 0 {
			return allowed
		}
	}
	return !reserved(ip)
}

// reservedPrefixes are refused unless the operator allows them.
var reservedPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network"; 0.0.0.0 reaches the local host
		"10.0.0.0/8",      // RFC 1918
		"100.64.0.0/10",   // shared address space (carrier-grade NAT), used by some pod networks
		"127.0.0.0/8",     // loopback
		"169.254.0.0/16",  // link-local, with cloud metadata at 169.254.169.254
		"172.16.0.0/12",   // RFC 1918
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation
		"192.168.0.0/16",  // RFC 1918
		"198.18.0.0/15",   // benchmarking
		"198.51.100.0/24", // documentation
		"203.0.113.0/24",  // documentation
		"224.0.0.0/4",     // multicast
		"240.0.0.0/4",     // reserved, and the broadcast address
		"::/96",           // unspecified, loopback and IPv4-compatible addresses
		"::ffff:0:0:0/96", // IPv4-translated (SIIT)
		"64:ff9b:1::/48",  // local-use NAT64
		"100::/64",        // discard-only
		"2001::/32",       // Teredo, an IPv4 address in disguise
		"2001:db8::/32",   // documentation
		"2002::/16",       // 6to4, an IPv4 address in disguise
		"fc00::/7",        // unique local addresses
		"fe80::/10",       // link-local
		"fec0::/10",       // site-local (deprecated)
		"ff00::/8",        // multicast
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// nat64 is the well-known NAT64 prefix: its addresses reach the IPv4 address in their
// last 32 bits, and are judged by it.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// reserved reports whether ip (unmapped, without zone) is refused by default.
func reserved(ip netip.Addr) bool {
	if nat64.Contains(ip) {
		b := ip.As16()
		return reserved(netip.AddrFrom4([4]byte(b[12:])))
	}
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() || ip.IsMulticast() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	for _, pr := range reservedPrefixes {
		if pr.Contains(ip) {
			return true
		}
	}
	return false
}

// errEgressDenied is what the dialer's Control hook returns for a refused address.
var errEgressDenied = fmt.Errorf("address refused: %w", ErrEgressDenied)

// dialer returns a dial function that connects only where the policy allows: to an
// allowed host name at any address, else to addresses AllowsAddr accepts, judged in the
// Control hook on the address the connection is about to be made to.
func (p *EgressPolicy) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	checked := &net.Dialer{Timeout: dialTimeout, KeepAlive: dialKeepAlive, Control: p.control}
	open := &net.Dialer{Timeout: dialTimeout, KeepAlive: dialKeepAlive}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, _, err := net.SplitHostPort(addr); err == nil && p.AllowsHost(host) {
			return open.DialContext(ctx, network, addr)
		}
		conn, err := checked.DialContext(ctx, network, addr)
		if err != nil && errors.Is(err, ErrEgressDenied) {
			noteFault(ctx, failure(ErrEgressDenied, false, "blocked by egress policy"))
		}
		return conn, err
	}
}

// control is the dialer's Control hook: it runs after name resolution, before connect,
// for every address tried.
func (p *EgressPolicy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !p.AllowsAddr(ap.Addr()) {
		return errEgressDenied
	}
	return nil
}
