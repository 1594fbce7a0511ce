package controllers

// WriteStatus exposes writeStatus to the tests against the API server.
var WriteStatus = writeStatus
