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
	"syscall"
	"time"
)

func main() {
	url := flag.String("url", "", "the endpoint to drive (POST)")
	token := flag.String("token", "", "bearer token")
	flag.Func("header", "an extra request header, \"Name: value\"; repeatable (e.g. Packhost-Revision: rev)", func(v string) error {
		name, value, ok := strings.Cut(v, ":")
		if !ok {
			return fmt.Errorf("header %q: want Name: value", v)
		}
		headers = append(headers, [2]string{strings.TrimSpace(name), strings.TrimSpace(value)})
		return nil
	})
	body := flag.String("body", `{"kind":"message","user_id":"{{user}}","payload":{"text":"hello"}}`, "request body; {{user}} becomes one of -users user ids")
	users := flag.Int("users", 1000, "distinct user ids to spread requests over")
	conc := flag.String("c", "1,8,32", "comma-separated concurrencies")
	dur := flag.Duration("d", 5*time.Second, "how long to drive each concurrency")
	floor := flag.Bool("floor", false, "also drive a bare net/http server answering the same bytes")
	rounds := flag.Int("rounds", 5, "with -floor: alternate floor and target this many times, each for -d/rounds")
	label := flag.String("label", "target", "name of the target in the output")
	targetPID := flag.Int("target-pid", 0, "the target's process id, to report its CPU time per request (from /proc)")
	flag.IntVar(&backendPID, "backend-pid", 0, "another process whose CPU time per request to report, e.g. the API server behind the target")
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
	if err := run(*url, *token, *body, *users, cs, *dur, *floor, *rounds, *label, *targetPID); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// backendPID is a process behind the target (0: none) whose CPU time is reported too.
var backendPID int

// result is one run's figures.
type result struct {
	requests, errors int
	elapsed          time.Duration
	lat              []time.Duration
	// serverCPU is the CPU time the server process spent during the run (negative when
	// unknown), clientCPU this process's, backendCPU the -backend-pid process's.
	serverCPU, clientCPU, backendCPU time.Duration
}

func (r result) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(float64(len(r.lat))*p))]
}

func run(url, token, body string, users int, cs []int, dur time.Duration, floor bool, rounds int, label string, targetPID int) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}, Timeout: 30 * time.Second}
	var floorURL string
	floorPID := 0
	if floor {
		// The floor answers what the target answers, byte for byte.
		sample, err := do(client, url, token, strings.ReplaceAll(body, "{{user}}", "u0"))
		if err != nil {
			return fmt.Errorf("sample request to the target: %w", err)
		}
		addr, pid, stop, err := startFloor(sample)
		if err != nil {
			return err
		}
		floorPID = pid
		defer stop()
		floorURL = "http://" + addr + "/"
	}
	fmt.Printf("%-12s %5s %10s %10s %10s %10s %7s %12s %12s", "target", "c", "req/s", "p50", "p99", "p999", "errors", "server-cpu/r", "client-cpu/r")
	if backendPID > 0 {
		fmt.Printf(" %13s", "backend-cpu/r")
	}
	fmt.Println()
	for _, c := range cs {
		if !floor {
			print(label, c, measure(targetPID, func() result { return drive(client, url, token, body, users, c, dur) }))
			continue
		}
		// The machine's speed drifts within seconds, so the floor and the target take
		// turns in short rounds and each side's figures pool its rounds.
		var fr, tr result
		var ratios []float64
		for range rounds {
			f := measure(floorPID, func() result { return drive(client, floorURL, token, body, users, c, dur/time.Duration(rounds)) })
			t := measure(targetPID, func() result { return drive(client, url, token, body, users, c, dur/time.Duration(rounds)) })
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
	sum := func(a, b time.Duration) time.Duration {
		if a < 0 || b < 0 {
			return -1
		}
		return a + b
	}
	return result{requests: r.requests + o.requests, errors: r.errors + o.errors, elapsed: r.elapsed + o.elapsed, lat: lat,
		serverCPU: sum(r.serverCPU, o.serverCPU), clientCPU: r.clientCPU + o.clientCPU, backendCPU: sum(r.backendCPU, o.backendCPU)}
}

func print(label string, c int, r result) {
	perRequest := func(d time.Duration) string {
		if d < 0 || r.requests == 0 {
			return "-"
		}
		return (d / time.Duration(r.requests)).Round(100 * time.Nanosecond).String()
	}
	fmt.Printf("%-12s %5d %10.0f %10s %10s %10s %7d %12s %12s", label, c, r.rps(),
		r.pct(0.5).Round(time.Microsecond), r.pct(0.99).Round(time.Microsecond), r.pct(0.999).Round(time.Microsecond), r.errors,
		perRequest(r.serverCPU), perRequest(r.clientCPU))
	if backendPID > 0 {
		fmt.Printf(" %13s", perRequest(r.backendCPU))
	}
	fmt.Println()
}

// measure runs f and records the CPU time the server process pid (0: unknown), the
// backend process and this process spent meanwhile. On a machine where client and
// server share the cores, CPU per request is steadier than throughput, and it shows
// where the time went.
func measure(pid int, f func() result) result {
	server0, backend0, client0 := processCPU(pid), processCPU(backendPID), selfCPU()
	r := f()
	server1, backend1 := processCPU(pid), processCPU(backendPID)
	r.clientCPU = selfCPU() - client0
	r.serverCPU, r.backendCPU = cpuDelta(server0, server1), cpuDelta(backend0, backend1)
	return r
}

// cpuDelta is the CPU time between two readings of processCPU, or -1 if either failed.
func cpuDelta(before, after time.Duration) time.Duration {
	if before < 0 || after < 0 {
		return -1
	}
	return after - before
}

// processCPU is the user and system CPU time of process pid from /proc, or -1.
func processCPU(pid int) time.Duration {
	if pid <= 0 {
		return -1
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name, which ends at the last ')': utime and stime are
	// the 12th and 13th, in clock ticks of 1/100 s.
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return -1
	}
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// headers are the -header flags, sent with every request.
var headers [][2]string

func do(client *http.Client, url, token, body string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for _, h := range headers {
		req.Header.Set(h[0], h[1])
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
// its address and process id.
func startFloor(sample []byte) (string, int, func(), error) {
	f, err := os.CreateTemp("", "loadgen-floor-")
	if err != nil {
		return "", 0, nil, err
	}
	_, _ = f.Write(sample)
	f.Close()
	fail := func(err error) (string, int, func(), error) { os.Remove(f.Name()); return "", 0, nil, err }
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(self, "-serve-floor", "127.0.0.1:0", "-floor-file", f.Name())
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); os.Remove(f.Name()) }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", 0, nil, fmt.Errorf("floor server: %w", err)
	}
	return strings.TrimSpace(line), cmd.Process.Pid, stop, nil
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
