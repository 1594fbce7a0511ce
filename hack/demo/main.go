// Command demo sends a little traffic to a local packhost and prints what a user wants to
// see: the split as measured, a sticky user, a resumed session, and where to curl next.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
)

type reply struct {
	Revision   string `json:"revision"`
	Activities []struct {
		Payload json.RawMessage `json:"payload"`
	} `json:"activities"`
	Error *struct{ Code, Message string } `json:"error"`
}

func main() {
	addr := flag.String("dispatcher", "127.0.0.1:8090", "dispatcher address")
	token := flag.String("token", "demo-token-change-me", "bearer token of tenant acme")
	flag.Parse()
	url := "http://" + *addr + "/v1/namespaces/default/tenants/acme/activities"
	send := func(body string) reply {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+*token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		var r reply
		_ = json.NewDecoder(resp.Body).Decode(&r)
		if r.Error != nil {
			fmt.Fprintf(os.Stderr, "demo: %s: %s\n", r.Error.Code, r.Error.Message)
			os.Exit(1)
		}
		return r
	}
	payload := func(r reply) string {
		if len(r.Activities) == 0 {
			return "(no reply)"
		}
		return string(r.Activities[0].Payload)
	}

	counts := map[string]int{}
	for i := range 500 {
		counts[send(fmt.Sprintf(`{"kind":"message","user_id":"demo-user-%d"}`, i)).Revision]++
	}
	fmt.Println("\nThe split as measured (500 users, one activity each):")
	for rev, n := range counts {
		fmt.Printf("  %-14s %3d users  %5.1f%%\n", rev, n, float64(n)/5)
	}

	fmt.Println("\nA sticky user (five activities, one revision, its own counter):")
	for range 5 {
		r := send(`{"kind":"custom","action":"count-user","user_id":"ann"}`)
		fmt.Printf("  ann -> %s %s\n", r.Revision, payload(r))
	}

	fmt.Println("\nA resumed session (the survey overlay parks its flow between questions):")
	r := send(`{"kind":"message","user_id":"bob","flow_id":"survey","payload":"start"}`)
	fmt.Printf("  bob starts the survey on %s: %s\n", r.Revision, payload(r))
	for _, answer := range []string{`"Bob"`, `"operators"`, `"bob@example.com"`} {
		r = send(`{"kind":"message","user_id":"bob","payload":` + answer + `}`)
		fmt.Printf("  bob answers %-18s -> %s %s\n", answer, r.Revision, payload(r))
	}

	fmt.Printf(`
Try it yourself:
  curl -s -H 'Authorization: Bearer %s' \
    -d '{"kind":"message","user_id":"you"}' %s
  curl -s -H 'Authorization: Bearer ops-token-change-me' \
    -d '{"kind":"message","user_id":"you"}' %s   # a routing caller picks the canary by tag
`, *token, url, strings.Replace(url, "/activities", "/tags/canary/activities", 1))
}
