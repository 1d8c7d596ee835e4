// gcpkms is a Google Cloud KMS emulator that this project wrote and owns: a TEST
// DOUBLE, not Google's service, and never to hold a real secret.
//
// It exists because no Cloud KMS emulator is served by the package registries this
// project builds from. It speaks the real gRPC API (google.cloud.kms.v1, from the
// official cloud.google.com/go/kms/apiv1/kmspb types), so the Python provider is
// tested through the unmodified google-cloud-kms SDK over real gRPC. It implements
// the part of KeyManagementService the provider and its tests use: key rings,
// ENCRYPT_DECRYPT crypto keys, versions and the primary version, the version states
// ENABLED / DISABLED / DESTROY_SCHEDULED, Encrypt and Decrypt with additional
// authenticated data and CRC32C integrity fields, and the status codes Cloud KMS
// returns for each state. Everything else answers UNIMPLEMENTED.
//
// Each version holds its own AES-256-GCM key; a ciphertext names its version (see
// crypto.go). State lives in memory and, with --data-dir, in a JSON file rewritten
// after every change, so a restarted emulator comes back with the same keys. That
// file holds raw key material (mode 0600): it is test data.
//
// Plain gRPC without TLS or authentication: it listens on the loopback address only.
//
// Usage: gcpkms --port 9011 [--data-dir DIR] [--host 127.0.0.1]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc"
)

func main() {
	port := flag.Int("port", 0, "TCP port to listen on (0: any free port, printed on stderr)")
	host := flag.String("host", "127.0.0.1", "loopback address to listen on")
	dataDir := flag.String("data-dir", "", "directory for the state file (empty: memory only)")
	flag.Parse()

	ip := net.ParseIP(*host)
	if *host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		fatalf("refusing to listen on %q: this test double serves loopback addresses only", *host)
	}
	store, err := openStore(*dataDir)
	if err != nil {
		fatalf("%v", err)
	}
	listener, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		fatalf("listen: %v", err)
	}
	server := grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(server, newService(store, time.Now))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() { server.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			server.Stop()
		}
	}()

	fmt.Fprintf(os.Stderr, "gcpkms (test double) listening on %s\n", listener.Addr())
	if err := server.Serve(listener); err != nil {
		fatalf("serve: %v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "gcpkms: "+format+"\n", args...)
	os.Exit(1)
}
