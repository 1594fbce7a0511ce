package controllers

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

// WriteStatus exposes writeStatus to the tests against the API server.
var WriteStatus = writeStatus

// ReadReports exposes readReports (it returns how many reports it trusted).
func ReadReports(ctx context.Context, reader client.Reader, split *v1.TrafficSplit) (int, error) {
	reports, err := readReports(ctx, reader, split)
	return len(reports), err
}
