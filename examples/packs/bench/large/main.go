//go:build wasip1

// Command large is a benchmark pack: the echo handler linked with much of the standard
// library, so that it is a realistic Go-built module of about 10 MiB for load figures.
package main

import (
	"archive/tar"
	"archive/zip"
	"compress/bzip2"
	"compress/flate"
	"compress/gzip"
	"compress/lzw"
	"compress/zlib"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"debug/dwarf"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/asn1"
	"encoding/csv"
	"encoding/gob"
	"encoding/xml"
	"go/ast"
	"go/format"
	"go/parser"
	"go/printer"
	"go/types"
	"html/template"
	"image/gif"
	"image/jpeg"
	"image/png"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"net/smtp"
	"regexp"
	"text/tabwriter"

	"debug/gosym"
	"expvar"
	"go/build"
	"go/doc"
	"go/importer"
	"index/suffixarray"
	"log/slog"
	"mime/multipart"
	"net/http/cookiejar"
	"net/http/httputil"
	"net/rpc"
	"net/rpc/jsonrpc"
	"runtime/pprof"
	"testing"
	"text/template/parse"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/packhost/packhost/sdk/go/packhost"
)

// Sink keeps every package linked in.
var Sink = []any{tar.NewReader, zip.NewWriter, bzip2.NewReader, flate.NewReader, gzip.NewReader, lzw.NewReader,
	zlib.NewReader, ecdsa.Sign, ed25519.Sign, rsa.SignPKCS1v15, tls.Client, x509.ParseCertificate, sql.Open,
	dwarf.New, elf.NewFile, macho.NewFile, pe.NewFile, asn1.Marshal, csv.NewReader, gob.NewEncoder, xml.Marshal,
	ast.Inspect, format.Source, parser.ParseFile, printer.Fprint, types.NewPackage, template.New, gif.Decode,
	jpeg.Decode, png.Decode, big.NewInt, http.Get, httptest.NewServer, mail.ParseAddress, smtp.Dial,
	regexp.MustCompile, tabwriter.NewWriter, gosym.NewTable, expvar.NewInt, build.Import, doc.New, importer.Default,
	suffixarray.New, slog.New, multipart.NewReader, cookiejar.New, httputil.DumpRequest, rpc.NewServer,
	jsonrpc.NewClient, pprof.StartCPUProfile, testing.Benchmark, parse.Parse, wazero.NewRuntime, wasi_snapshot_preview1.Instantiate, yaml.Marshal, resource.ParseQuantity, labels.Parse, validation.IsDNS1123Label, name.ParseReference, remote.Get}

func init() {
	packhost.Handle(func(a *packhost.Activity) error { return packhost.Reply(a.Payload) })
}

func main() {}
