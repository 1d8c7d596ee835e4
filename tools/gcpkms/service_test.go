// Tests of the emulator through a real gRPC client (over an in-memory connection):
// what the Python provider relies on, and the status code of every refusal.

package main

import (
	"context"
	"net"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	location = "projects/p/locations/global"
	ring     = location + "/keyRings/r"
	keyName  = ring + "/cryptoKeys/k"
)

// serve starts the service on an in-memory listener and returns a client for it.
func serve(t *testing.T, dir string) kmspb.KeyManagementServiceClient {
	t.Helper()
	st, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(server, newService(st, time.Now))
	go func() { _ = server.Serve(listener) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return listener.Dial() }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); server.Stop() })
	return kmspb.NewKeyManagementServiceClient(conn)
}

// withKey creates the key ring and an ENCRYPT_DECRYPT key with its first version.
func withKey(t *testing.T, c kmspb.KeyManagementServiceClient) *kmspb.CryptoKey {
	t.Helper()
	ctx := context.Background()
	if _, err := c.CreateKeyRing(ctx, &kmspb.CreateKeyRingRequest{Parent: location, KeyRingId: "r"}); err != nil {
		t.Fatal(err)
	}
	key, err := c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{
		Parent: ring, CryptoKeyId: "k",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT},
	})
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got %v (%v), want %v", got, err, want)
	}
}

func encrypt(t *testing.T, c kmspb.KeyManagementServiceClient, plaintext, aad []byte) *kmspb.EncryptResponse {
	t.Helper()
	resp, err := c.Encrypt(context.Background(), &kmspb.EncryptRequest{
		Name: keyName, Plaintext: plaintext, AdditionalAuthenticatedData: aad,
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func decrypt(c kmspb.KeyManagementServiceClient, ciphertext, aad []byte) (*kmspb.DecryptResponse, error) {
	return c.Decrypt(context.Background(), &kmspb.DecryptRequest{
		Name: keyName, Ciphertext: ciphertext, AdditionalAuthenticatedData: aad,
	})
}

func setState(c kmspb.KeyManagementServiceClient, version string, s kmspb.CryptoKeyVersion_CryptoKeyVersionState) error {
	_, err := c.UpdateCryptoKeyVersion(context.Background(), &kmspb.UpdateCryptoKeyVersionRequest{
		CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: version, State: s},
		UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
	})
	return err
}

func TestCreateKeyHasEnabledPrimary(t *testing.T) {
	c := serve(t, "")
	key := withKey(t, c)
	if key.GetPrimary().GetName() != keyName+"/cryptoKeyVersions/1" ||
		key.GetPrimary().GetState() != kmspb.CryptoKeyVersion_ENABLED {
		t.Fatalf("primary = %v", key.GetPrimary())
	}
	got, err := c.GetCryptoKey(context.Background(), &kmspb.GetCryptoKeyRequest{Name: keyName})
	if err != nil || got.GetPrimary().GetName() != key.GetPrimary().GetName() {
		t.Fatalf("GetCryptoKey = %v, %v", got, err)
	}
}

func TestRoundTripWithAADAndChecksums(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	plaintext, aad := []byte("a data key of 32 bytes, exactly!"), []byte("binding")
	resp, err := c.Encrypt(context.Background(), &kmspb.EncryptRequest{
		Name: keyName, Plaintext: plaintext, AdditionalAuthenticatedData: aad,
		PlaintextCrc32C:                   wrapperspb.Int64(crc32c(plaintext)),
		AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(crc32c(aad)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetName() != keyName+"/cryptoKeyVersions/1" {
		t.Fatalf("name = %q", resp.GetName())
	}
	if !resp.GetVerifiedPlaintextCrc32C() || !resp.GetVerifiedAdditionalAuthenticatedDataCrc32C() {
		t.Fatal("checksums sent but not reported verified")
	}
	if resp.GetCiphertextCrc32C().GetValue() != crc32c(resp.GetCiphertext()) {
		t.Fatal("ciphertext_crc32c does not match the ciphertext")
	}
	out, err := c.Decrypt(context.Background(), &kmspb.DecryptRequest{
		Name: keyName, Ciphertext: resp.GetCiphertext(), AdditionalAuthenticatedData: aad,
		CiphertextCrc32C:                  wrapperspb.Int64(crc32c(resp.GetCiphertext())),
		AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(crc32c(aad)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(out.GetPlaintext()) != string(plaintext) || out.GetPlaintextCrc32C().GetValue() != crc32c(plaintext) || !out.GetUsedPrimary() {
		t.Fatalf("decrypt = %v", out)
	}
	// Without checksums, nothing is reported verified.
	bare := encrypt(t, c, plaintext, aad)
	if bare.GetVerifiedPlaintextCrc32C() || bare.GetVerifiedAdditionalAuthenticatedDataCrc32C() {
		t.Fatal("verified flags set although no checksum was sent")
	}
}

func TestChecksumMismatchIsInvalidArgument(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	ctx := context.Background()
	_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: keyName, Plaintext: []byte("x"),
		PlaintextCrc32C: wrapperspb.Int64(crc32c([]byte("y")))})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: keyName, Plaintext: []byte("x"),
		AdditionalAuthenticatedData:       []byte("a"),
		AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(crc32c([]byte("b")))})
	wantCode(t, err, codes.InvalidArgument)
	ct := encrypt(t, c, []byte("x"), nil).GetCiphertext()
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: keyName, Ciphertext: ct,
		CiphertextCrc32C: wrapperspb.Int64(crc32c(ct) ^ 1)})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: keyName, Ciphertext: ct,
		AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(crc32c([]byte("z")))})
	wantCode(t, err, codes.InvalidArgument)
}

func TestCiphertextIsBoundToAADKeyAndVersion(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	ctx := context.Background()
	ct := encrypt(t, c, []byte("secret"), []byte("context-a")).GetCiphertext()

	_, err := decrypt(c, ct, []byte("context-b"))
	wantCode(t, err, codes.InvalidArgument)

	flipped := append([]byte(nil), ct...)
	flipped[len(flipped)-1] ^= 1
	_, err = decrypt(c, flipped, []byte("context-a"))
	wantCode(t, err, codes.InvalidArgument)

	_, err = decrypt(c, ct[:headerSize], []byte("context-a"))
	wantCode(t, err, codes.InvalidArgument)

	// Another key with the same version number does not open it.
	if _, err := c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{Parent: ring, CryptoKeyId: "k2",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: ring + "/cryptoKeys/k2", Ciphertext: ct,
		AdditionalAuthenticatedData: []byte("context-a")})
	wantCode(t, err, codes.InvalidArgument)

	// Naming another (enabled) version in the header does not open it either.
	if _, err := c.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: keyName}); err != nil {
		t.Fatal(err)
	}
	moved := append([]byte(nil), ct...)
	moved[4] = 2
	_, err = decrypt(c, moved, []byte("context-a"))
	wantCode(t, err, codes.InvalidArgument)

	// Decrypt takes the crypto key, not a version.
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: keyName + "/cryptoKeyVersions/1", Ciphertext: ct})
	wantCode(t, err, codes.InvalidArgument)
}

func TestRotationMovesEncryptButOldVersionsDecrypt(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	ctx := context.Background()
	old := encrypt(t, c, []byte("old"), nil).GetCiphertext()
	v2, err := c.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: keyName})
	if err != nil {
		t.Fatal(err)
	}
	if v2.GetName() != keyName+"/cryptoKeyVersions/2" || v2.GetState() != kmspb.CryptoKeyVersion_ENABLED {
		t.Fatalf("new version = %v", v2)
	}
	// A new version is not primary until made so.
	if got := encrypt(t, c, []byte("x"), nil).GetName(); got != keyName+"/cryptoKeyVersions/1" {
		t.Fatalf("encrypt used %q before the primary changed", got)
	}
	key, err := c.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: keyName, CryptoKeyVersionId: "2"})
	if err != nil || key.GetPrimary().GetName() != v2.GetName() {
		t.Fatalf("UpdateCryptoKeyPrimaryVersion = %v, %v", key, err)
	}
	if got := encrypt(t, c, []byte("x"), nil).GetName(); got != v2.GetName() {
		t.Fatalf("encrypt used %q after the primary changed", got)
	}
	out, err := decrypt(c, old, nil)
	if err != nil || string(out.GetPlaintext()) != "old" || out.GetUsedPrimary() {
		t.Fatalf("old ciphertext: %v, %v", out, err)
	}
	// Encrypt may name a version explicitly.
	byVersion, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: keyName + "/cryptoKeyVersions/1", Plaintext: []byte("y")})
	if err != nil || byVersion.GetName() != keyName+"/cryptoKeyVersions/1" {
		t.Fatalf("encrypt by version = %v, %v", byVersion, err)
	}
	// Only an enabled version can become primary.
	if err := setState(c, keyName+"/cryptoKeyVersions/1", kmspb.CryptoKeyVersion_DISABLED); err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: keyName, CryptoKeyVersionId: "1"})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = c.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: keyName, CryptoKeyVersionId: "9"})
	wantCode(t, err, codes.NotFound)
}

func TestDisabledAndDestroyedVersionsAreFailedPrecondition(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	ctx := context.Background()
	v1 := keyName + "/cryptoKeyVersions/1"
	ct := encrypt(t, c, []byte("dek"), []byte("aad")).GetCiphertext()

	if err := setState(c, v1, kmspb.CryptoKeyVersion_DISABLED); err != nil {
		t.Fatal(err)
	}
	_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: keyName, Plaintext: []byte("x")})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = decrypt(c, ct, []byte("aad"))
	wantCode(t, err, codes.FailedPrecondition)

	if err := setState(c, v1, kmspb.CryptoKeyVersion_ENABLED); err != nil {
		t.Fatal(err)
	}
	if _, err := decrypt(c, ct, []byte("aad")); err != nil {
		t.Fatalf("re-enabled version: %v", err)
	}

	destroyed, err := c.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: v1})
	if err != nil || destroyed.GetState() != kmspb.CryptoKeyVersion_DESTROY_SCHEDULED || destroyed.GetDestroyTime() == nil {
		t.Fatalf("destroy = %v, %v", destroyed, err)
	}
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: keyName, Plaintext: []byte("x")})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = decrypt(c, ct, []byte("aad"))
	wantCode(t, err, codes.FailedPrecondition)
	// A destroyed version can be neither re-enabled nor destroyed again.
	wantCode(t, setState(c, v1, kmspb.CryptoKeyVersion_ENABLED), codes.FailedPrecondition)
	_, err = c.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: v1})
	wantCode(t, err, codes.FailedPrecondition)
	// Restore brings it back disabled, as Cloud KMS does.
	restored, err := c.RestoreCryptoKeyVersion(ctx, &kmspb.RestoreCryptoKeyVersionRequest{Name: v1})
	if err != nil || restored.GetState() != kmspb.CryptoKeyVersion_DISABLED || restored.GetDestroyTime() != nil {
		t.Fatalf("restore = %v, %v", restored, err)
	}
	// Only ENABLED and DISABLED can be set through UpdateCryptoKeyVersion.
	wantCode(t, setState(c, v1, kmspb.CryptoKeyVersion_DESTROYED), codes.InvalidArgument)
	_, err = c.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{
		CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: v1, State: kmspb.CryptoKeyVersion_ENABLED}})
	wantCode(t, err, codes.InvalidArgument)
}

func TestNamesAndDuplicates(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	ctx := context.Background()
	_, err := c.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: ring + "/cryptoKeys/missing"})
	wantCode(t, err, codes.NotFound)
	_, err = c.GetKeyRing(ctx, &kmspb.GetKeyRingRequest{Name: location + "/keyRings/missing"})
	wantCode(t, err, codes.NotFound)
	_, err = c.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: keyName + "/cryptoKeyVersions/7"})
	wantCode(t, err, codes.NotFound)
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: ring + "/cryptoKeys/missing", Plaintext: []byte("x")})
	wantCode(t, err, codes.NotFound)
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: ring + "/cryptoKeys/missing", Ciphertext: []byte("x")})
	wantCode(t, err, codes.NotFound)
	_, err = c.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: "not/a/key"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.CreateKeyRing(ctx, &kmspb.CreateKeyRingRequest{Parent: location, KeyRingId: "r"})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{Parent: ring, CryptoKeyId: "k",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT}})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{Parent: location + "/keyRings/missing", CryptoKeyId: "k",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT}})
	wantCode(t, err, codes.NotFound)
	_, err = c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{Parent: ring, CryptoKeyId: "s",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ASYMMETRIC_SIGN}})
	wantCode(t, err, codes.Unimplemented)
}

func TestKeyWithoutVersionsCannotEncrypt(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	ctx := context.Background()
	key, err := c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{Parent: ring, CryptoKeyId: "empty",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT}, SkipInitialVersionCreation: true})
	if err != nil || key.GetPrimary() != nil {
		t.Fatalf("create = %v, %v", key, err)
	}
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key.GetName(), Plaintext: []byte("x")})
	wantCode(t, err, codes.FailedPrecondition)
}

func TestListVersionsPages(t *testing.T) {
	c := serve(t, "")
	withKey(t, c)
	ctx := context.Background()
	for range 2 {
		if _, err := c.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: keyName}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	token := ""
	for {
		page, err := c.ListCryptoKeyVersions(ctx, &kmspb.ListCryptoKeyVersionsRequest{Parent: keyName, PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if page.GetTotalSize() != 3 {
			t.Fatalf("total_size = %d", page.GetTotalSize())
		}
		for _, v := range page.GetCryptoKeyVersions() {
			names = append(names, v.GetName())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(names) != 3 || names[2] != keyName+"/cryptoKeyVersions/3" {
		t.Fatalf("listed %v", names)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	c := serve(t, dir)
	withKey(t, c)
	ctx := context.Background()
	ct := encrypt(t, c, []byte("kept"), []byte("aad")).GetCiphertext()
	if _, err := c.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: keyName}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: keyName, CryptoKeyVersionId: "2"}); err != nil {
		t.Fatal(err)
	}
	if err := setState(c, keyName+"/cryptoKeyVersions/1", kmspb.CryptoKeyVersion_DISABLED); err != nil {
		t.Fatal(err)
	}

	again := serve(t, dir) // a second emulator on the same data dir
	key, err := again.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: keyName})
	if err != nil || key.GetPrimary().GetName() != keyName+"/cryptoKeyVersions/2" {
		t.Fatalf("after restart: %v, %v", key, err)
	}
	_, err = decrypt(again, ct, []byte("aad"))
	wantCode(t, err, codes.FailedPrecondition) // version 1 is still disabled
	if err := setState(again, keyName+"/cryptoKeyVersions/1", kmspb.CryptoKeyVersion_ENABLED); err != nil {
		t.Fatal(err)
	}
	out, err := decrypt(again, ct, []byte("aad"))
	if err != nil || string(out.GetPlaintext()) != "kept" {
		t.Fatalf("after restart: %v, %v", out, err)
	}
}
