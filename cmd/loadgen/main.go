// Command loadgen drives the dispatcher (or any HTTP endpoint) at given concurrencies
// and prints throughput and p50/p99/p999 latency. With -floor it also drives, in the same
// run and taking turns with the target in short rounds, a bare net/http server that
// answers with the same bytes the target does: the floor for HTTP on this machine, which
// the target's figures are compared with.
//
//	loadgen -url http://127.0.0.1:8090/v1/namespaces/default/tenants/bench/activities \
//	  -token demo-token-change-me -c 1,8,32 -d 5s -floor
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "the endpoint to drive (POST)")
	token := flag.String("token", "", "bearer token")
	body := flag.String("body", `{"kind":"message","user_id":"{{user}}","payload":{"text":"hello"}}`, "request body; {{user}} becomes one of -users user ids")
	users := flag.Int("users", 1000, "distinct user ids to spread requests over")
	conc := flag.String("c", "1,8,32", "comma-separated concurrencies")
	dur := flag.Duration("d", 5*time.Second, "how long to drive each concurrency")
	floor := flag.Bool("floor", false, "also drive a bare net/http server answering the same bytes")
	rounds := flag.Int("rounds", 5, "with -floor: alternate floor and target this many times, each for -d/rounds")
	label := flag.String("label", "target", "name of the target in the output")
	serveFloor := flag.String("serve-floor", "", "internal: serve the floor on this address, answering the bytes of -floor-file")
	floorFile := flag.String("floor-file", "", "internal: the floor's answer")
	flag.Parse()
	if *serveFloor != "" {
		if err := serve(*serveFloor, *floorFile); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen floor:", err)
			os.Exit(1)
		}
		return
	}
	if *url == "" {
		fmt.Fprintln(os.Stderr, "loadgen: -url is required")
		os.Exit(2)
	}
	var cs []int
	for _, c := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "loadgen: bad concurrency %q\n", c)
			os.Exit(2)
		}
		cs = append(cs, n)
	}
	if *rounds < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: -rounds must be at least 1")
		os.Exit(2)
	}
	if err := run(*url, *token, *body, *users, cs, *dur, *floor, *rounds, *label); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// result is one run's figures.
type result struct {
	requests, errors int
	elapsed          time.Duration
	lat              []time.Duration
}

func (r result) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(float64(len(r.lat))*p))]
}

func run(url, token, body string, users int, cs []int, dur time.Duration, floor bool, rounds int, label string) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}, Timeout: 30 * time.Second}
	var floorURL string
	if floor {
		// The floor answers what the target answers, byte for byte.
		sample, err := do(client, url, token, strings.ReplaceAll(body, "{{user}}", "u0"))
		if err != nil {
			return fmt.Errorf("sample request to the target: %w", err)
		}
		addr, stop, err := startFloor(sample)
		if err != nil {
			return err
		}
		defer stop()
		floorURL = "http://" + addr + "/"
	}
	fmt.Printf("%-12s %5s %10s %10s %10s %10s %7s\n", "target", "c", "req/s", "p50", "p99", "p999", "errors")
	for _, c := range cs {
		if !floor {
			print(label, c, drive(client, url, token, body, users, c, dur))
			continue
		}
		// The machine's speed drifts within seconds, so the floor and the target take
		// turns in short rounds and each side's figures pool its rounds.
		var fr, tr result
		var ratios []float64
		for range rounds {
			f := drive(client, floorURL, token, body, users, c, dur/time.Duration(rounds))
			t := drive(client, url, token, body, users, c, dur/time.Duration(rounds))
			ratios = append(ratios, t.rps()/f.rps())
			fr, tr = fr.add(f), tr.add(t)
		}
		print("floor", c, fr)
		print(label, c, tr)
		slices.Sort(ratios)
		fmt.Printf("%-12s %5d %9.2fx %+9s   rounds %.2f–%.2fx\n", "ratio", c, tr.rps()/fr.rps(),
			(tr.pct(0.5) - fr.pct(0.5)).Round(time.Microsecond), ratios[0], ratios[len(ratios)-1])
	}
	return nil
}

// add pools two runs' figures.
func (r result) add(o result) result {
	lat := append(r.lat, o.lat...)
	slices.Sort(lat)
	return result{requests: r.requests + o.requests, errors: r.errors + o.errors, elapsed: r.elapsed + o.elapsed, lat: lat}
}

func print(label string, c int, r result) {
	fmt.Printf("%-12s %5d %10.0f %10s %10s %10s %7d\n", label, c, r.rps(),
		r.pct(0.5).Round(time.Microsecond), r.pct(0.99).Round(time.Microsecond), r.pct(0.999).Round(time.Microsecond), r.errors)
}

func do(client *http.Client, url, token, body string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	return b, nil
}

// drive runs c workers against url for dur; requests stop when dur is over.
func drive(client *http.Client, url, token, body string, users, c int, dur time.Duration) result {
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var (
		mu     sync.Mutex
		all    []time.Duration
		errs   atomic.Int64
		next   atomic.Int64
		wg     sync.WaitGroup
		start  = time.Now()
		bodies = make([]string, users)
	)
	for i := range bodies {
		bodies[i] = strings.ReplaceAll(body, "{{user}}", "u"+strconv.Itoa(i))
	}
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				b := bodies[int(next.Add(1))%users]
				t0 := time.Now()
				if _, err := do(client, url, token, b); err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						errs.Add(1)
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(all)
	return result{requests: len(all), errors: int(errs.Load()), elapsed: time.Since(start), lat: all}
}

// startFloor runs this binary as the floor server in a process of its own and returns
// its address.
func startFloor(sample []byte) (string, func(), error) {
	f, err := os.CreateTemp("", "loadgen-floor-")
	if err != nil {
		return "", nil, err
	}
	_, _ = f.Write(sample)
	f.Close()
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(self, "-serve-floor", "127.0.0.1:0", "-floor-file", f.Name())
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); os.Remove(f.Name()) }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("floor server: %w", err)
	}
	return strings.TrimSpace(line), stop, nil
}

// serve is the floor: a bare net/http server answering every request with the same bytes.
func serve(addr, file string) error {
	sample, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println(l.Addr().String())
	return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(sample)))
		_, _ = w.Write(sample)
	}))
}
