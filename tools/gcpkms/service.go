// The KeyManagementService handlers. Status codes follow what Cloud KMS returns:
// INVALID_ARGUMENT for a malformed request, a CRC32C mismatch or a ciphertext that
// does not authenticate; NOT_FOUND for a name that does not exist; FAILED_PRECONDITION
// for a version whose state forbids the operation; ALREADY_EXISTS on a duplicate id.

package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const defaultDestroyScheduled = 30 * 24 * time.Hour

var (
	locationName  = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+$`)
	keyRingName   = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+$`)
	cryptoKeyName = regexp.MustCompile(`^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+)/cryptoKeys/[^/]+$`)
	versionName   = regexp.MustCompile(`^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)/cryptoKeyVersions/([1-9][0-9]{0,8})$`)
	resourceID    = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)
)

type service struct {
	kmspb.UnimplementedKeyManagementServiceServer
	st  *store
	now func() time.Time
}

func newService(st *store, now func() time.Time) *service {
	return &service{st: st, now: now}
}

type state = kmspb.CryptoKeyVersion_CryptoKeyVersionState

var (
	enabled          = kmspb.CryptoKeyVersion_ENABLED.String()
	disabled         = kmspb.CryptoKeyVersion_DISABLED.String()
	destroyScheduled = kmspb.CryptoKeyVersion_DESTROY_SCHEDULED.String()
)

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func notFound(kind, name string) error {
	return status.Errorf(codes.NotFound, "%s %s not found.", kind, name)
}

func wrongState(name, state string) error {
	return status.Errorf(codes.FailedPrecondition,
		"The request cannot be fulfilled. Resource %s has value %s in field crypto_key_version.state.",
		name, state)
}

func (s *service) persist() error {
	if err := s.st.save(); err != nil {
		return status.Errorf(codes.Internal, "the emulator could not save its state: %v", err)
	}
	return nil
}

// -- lookups (callers hold s.st.mu) ---------------------------------------------------

func (s *service) keyRing(name string) (*keyRingRecord, error) {
	if !keyRingName.MatchString(name) {
		return nil, invalid("invalid key ring name %q", name)
	}
	ring, ok := s.st.data.KeyRings[name]
	if !ok {
		return nil, notFound("KeyRing", name)
	}
	return ring, nil
}

func (s *service) cryptoKey(name string) (*cryptoKeyRecord, error) {
	if !cryptoKeyName.MatchString(name) {
		return nil, invalid("invalid crypto key name %q", name)
	}
	key, ok := s.st.data.CryptoKeys[name]
	if !ok {
		return nil, notFound("CryptoKey", name)
	}
	return key, nil
}

func (s *service) cryptoKeyVersion(name string) (*cryptoKeyRecord, *versionRecord, error) {
	m := versionName.FindStringSubmatch(name)
	if m == nil {
		return nil, nil, invalid("invalid crypto key version name %q", name)
	}
	key, err := s.cryptoKey(m[1])
	if err != nil {
		return nil, nil, err
	}
	id, _ := strconv.Atoi(m[2])
	v := key.version(id)
	if v == nil {
		return nil, nil, notFound("CryptoKeyVersion", name)
	}
	return key, v, nil
}

// -- proto views ----------------------------------------------------------------------

func versionResource(key *cryptoKeyRecord, v *versionRecord) string {
	return fmt.Sprintf("%s/cryptoKeyVersions/%d", key.Name, v.ID)
}

func versionProto(key *cryptoKeyRecord, v *versionRecord) *kmspb.CryptoKeyVersion {
	out := &kmspb.CryptoKeyVersion{
		Name:            versionResource(key, v),
		State:           state(kmspb.CryptoKeyVersion_CryptoKeyVersionState_value[v.State]),
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
		Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		CreateTime:      timestamppb.New(v.CreateTime),
		GenerateTime:    timestamppb.New(v.CreateTime),
	}
	if v.DestroyTime != nil {
		out.DestroyTime = timestamppb.New(*v.DestroyTime)
	}
	return out
}

func keyProto(key *cryptoKeyRecord) *kmspb.CryptoKey {
	out := &kmspb.CryptoKey{
		Name:       key.Name,
		Purpose:    kmspb.CryptoKey_ENCRYPT_DECRYPT,
		CreateTime: timestamppb.New(key.CreateTime),
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
			Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		},
		Labels:                   key.Labels,
		DestroyScheduledDuration: durationpb.New(time.Duration(key.DestroyScheduledSeconds) * time.Second),
	}
	if v := key.version(key.Primary); v != nil {
		out.Primary = versionProto(key, v)
	}
	return out
}

func (s *service) addVersion(key *cryptoKeyRecord) (*versionRecord, error) {
	material, err := newKeyMaterial()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "key generation failed: %v", err)
	}
	next := 1
	for _, v := range key.Versions {
		next = max(next, v.ID+1)
	}
	v := &versionRecord{ID: next, State: enabled, Key: material, CreateTime: s.now().UTC()}
	key.Versions = append(key.Versions, v)
	return v, nil
}

// -- key rings ------------------------------------------------------------------------

func (s *service) CreateKeyRing(_ context.Context, req *kmspb.CreateKeyRingRequest) (*kmspb.KeyRing, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if !locationName.MatchString(req.GetParent()) {
		return nil, invalid("invalid location name %q", req.GetParent())
	}
	if !resourceID.MatchString(req.GetKeyRingId()) {
		return nil, invalid("invalid key ring id %q", req.GetKeyRingId())
	}
	name := req.GetParent() + "/keyRings/" + req.GetKeyRingId()
	if _, ok := s.st.data.KeyRings[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "KeyRing %s already exists.", name)
	}
	ring := &keyRingRecord{Name: name, CreateTime: s.now().UTC()}
	s.st.data.KeyRings[name] = ring
	if err := s.persist(); err != nil {
		return nil, err
	}
	return &kmspb.KeyRing{Name: name, CreateTime: timestamppb.New(ring.CreateTime)}, nil
}

func (s *service) GetKeyRing(_ context.Context, req *kmspb.GetKeyRingRequest) (*kmspb.KeyRing, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	ring, err := s.keyRing(req.GetName())
	if err != nil {
		return nil, err
	}
	return &kmspb.KeyRing{Name: ring.Name, CreateTime: timestamppb.New(ring.CreateTime)}, nil
}

// -- crypto keys ----------------------------------------------------------------------

func (s *service) CreateCryptoKey(_ context.Context, req *kmspb.CreateCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if _, err := s.keyRing(req.GetParent()); err != nil {
		return nil, err
	}
	if !resourceID.MatchString(req.GetCryptoKeyId()) {
		return nil, invalid("invalid crypto key id %q", req.GetCryptoKeyId())
	}
	spec := req.GetCryptoKey()
	if spec == nil {
		return nil, invalid("crypto_key is required")
	}
	if spec.GetPurpose() != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, status.Errorf(codes.Unimplemented,
			"this test double supports only ENCRYPT_DECRYPT keys, not %s", spec.GetPurpose())
	}
	if t := spec.GetVersionTemplate(); t != nil {
		if a := t.GetAlgorithm(); a != kmspb.CryptoKeyVersion_CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED &&
			a != kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION {
			return nil, status.Errorf(codes.Unimplemented, "algorithm %s is not emulated", a)
		}
		if p := t.GetProtectionLevel(); p != kmspb.ProtectionLevel_PROTECTION_LEVEL_UNSPECIFIED &&
			p != kmspb.ProtectionLevel_SOFTWARE {
			return nil, status.Errorf(codes.Unimplemented, "protection level %s is not emulated", p)
		}
	}
	name := req.GetParent() + "/cryptoKeys/" + req.GetCryptoKeyId()
	if _, ok := s.st.data.CryptoKeys[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "CryptoKey %s already exists.", name)
	}
	destroyAfter := defaultDestroyScheduled
	if d := spec.GetDestroyScheduledDuration(); d != nil {
		destroyAfter = d.AsDuration()
	}
	key := &cryptoKeyRecord{
		Name:                    name,
		CreateTime:              s.now().UTC(),
		Labels:                  spec.GetLabels(),
		DestroyScheduledSeconds: int64(destroyAfter / time.Second),
	}
	if !req.GetSkipInitialVersionCreation() {
		v, err := s.addVersion(key)
		if err != nil {
			return nil, err
		}
		key.Primary = v.ID
	}
	s.st.data.CryptoKeys[name] = key
	if err := s.persist(); err != nil {
		return nil, err
	}
	return keyProto(key), nil
}

func (s *service) GetCryptoKey(_ context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, err := s.cryptoKey(req.GetName())
	if err != nil {
		return nil, err
	}
	return keyProto(key), nil
}

func (s *service) UpdateCryptoKeyPrimaryVersion(_ context.Context, req *kmspb.UpdateCryptoKeyPrimaryVersionRequest) (*kmspb.CryptoKey, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, err := s.cryptoKey(req.GetName())
	if err != nil {
		return nil, err
	}
	id, convErr := strconv.Atoi(req.GetCryptoKeyVersionId())
	if convErr != nil || id < 1 {
		return nil, invalid("invalid crypto_key_version_id %q", req.GetCryptoKeyVersionId())
	}
	v := key.version(id)
	if v == nil {
		return nil, notFound("CryptoKeyVersion", fmt.Sprintf("%s/cryptoKeyVersions/%d", key.Name, id))
	}
	if v.State != enabled {
		return nil, wrongState(versionResource(key, v), v.State)
	}
	key.Primary = id
	if err := s.persist(); err != nil {
		return nil, err
	}
	return keyProto(key), nil
}

// -- versions -------------------------------------------------------------------------

func (s *service) CreateCryptoKeyVersion(_ context.Context, req *kmspb.CreateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, err := s.cryptoKey(req.GetParent())
	if err != nil {
		return nil, err
	}
	v, err := s.addVersion(key)
	if err != nil {
		return nil, err
	}
	if err := s.persist(); err != nil {
		return nil, err
	}
	return versionProto(key, v), nil
}

func (s *service) GetCryptoKeyVersion(_ context.Context, req *kmspb.GetCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, v, err := s.cryptoKeyVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	return versionProto(key, v), nil
}

func (s *service) ListCryptoKeyVersions(_ context.Context, req *kmspb.ListCryptoKeyVersionsRequest) (*kmspb.ListCryptoKeyVersionsResponse, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, err := s.cryptoKey(req.GetParent())
	if err != nil {
		return nil, err
	}
	if req.GetFilter() != "" || req.GetOrderBy() != "" {
		return nil, status.Error(codes.Unimplemented, "filter and order_by are not emulated")
	}
	start := 0
	if token := req.GetPageToken(); token != "" {
		start, err = strconv.Atoi(token)
		if err != nil || start < 0 || start > len(key.Versions) {
			return nil, invalid("invalid page_token")
		}
	}
	end := len(key.Versions)
	if size := int(req.GetPageSize()); size > 0 && start+size < end {
		end = start + size
	}
	out := &kmspb.ListCryptoKeyVersionsResponse{TotalSize: int32(len(key.Versions))}
	for _, v := range key.Versions[start:end] {
		out.CryptoKeyVersions = append(out.CryptoKeyVersions, versionProto(key, v))
	}
	if end < len(key.Versions) {
		out.NextPageToken = strconv.Itoa(end)
	}
	return out, nil
}

func (s *service) UpdateCryptoKeyVersion(_ context.Context, req *kmspb.UpdateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if req.GetCryptoKeyVersion() == nil {
		return nil, invalid("crypto_key_version is required")
	}
	if paths := req.GetUpdateMask().GetPaths(); !slices.Equal(paths, []string{"state"}) {
		return nil, invalid("update_mask must be exactly [\"state\"] in this test double, not %q", paths)
	}
	key, v, err := s.cryptoKeyVersion(req.GetCryptoKeyVersion().GetName())
	if err != nil {
		return nil, err
	}
	target := req.GetCryptoKeyVersion().GetState()
	if target != kmspb.CryptoKeyVersion_ENABLED && target != kmspb.CryptoKeyVersion_DISABLED {
		return nil, invalid("crypto_key_version.state may only be set to ENABLED or DISABLED, not %s", target)
	}
	if v.State != enabled && v.State != disabled {
		return nil, wrongState(versionResource(key, v), v.State)
	}
	v.State = target.String()
	if err := s.persist(); err != nil {
		return nil, err
	}
	return versionProto(key, v), nil
}

func (s *service) DestroyCryptoKeyVersion(_ context.Context, req *kmspb.DestroyCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, v, err := s.cryptoKeyVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	if v.State != enabled && v.State != disabled {
		return nil, wrongState(versionResource(key, v), v.State)
	}
	// The material is kept until destroy_time, as Cloud KMS does; this emulator never
	// reaches destroy_time (no timer), so a version stays DESTROY_SCHEDULED: unusable,
	// and restorable.
	when := s.now().UTC().Add(time.Duration(key.DestroyScheduledSeconds) * time.Second)
	v.State, v.DestroyTime = destroyScheduled, &when
	if err := s.persist(); err != nil {
		return nil, err
	}
	return versionProto(key, v), nil
}

func (s *service) RestoreCryptoKeyVersion(_ context.Context, req *kmspb.RestoreCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, v, err := s.cryptoKeyVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	if v.State != destroyScheduled {
		return nil, wrongState(versionResource(key, v), v.State)
	}
	v.State, v.DestroyTime = disabled, nil
	if err := s.persist(); err != nil {
		return nil, err
	}
	return versionProto(key, v), nil
}

// -- cryptographic operations ---------------------------------------------------------

// checkCRC refuses a request whose optional CRC32C field does not match its data.
func checkCRC(field string, data []byte, sum *wrapperspb.Int64Value) (verified bool, err error) {
	if sum == nil {
		return false, nil
	}
	if sum.GetValue() != crc32c(data) {
		return false, invalid("The checksum in field %s did not match the data in field %s.",
			field+"_crc32c", field)
	}
	return true, nil
}

func (s *service) Encrypt(_ context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	if len(req.GetPlaintext()) > maxPlaintext {
		return nil, invalid("plaintext is larger than %d bytes", maxPlaintext)
	}
	if len(req.GetAdditionalAuthenticatedData()) > maxAAD {
		return nil, invalid("additional_authenticated_data is larger than %d bytes", maxAAD)
	}
	verifiedPlaintext, err := checkCRC("plaintext", req.GetPlaintext(), req.GetPlaintextCrc32C())
	if err != nil {
		return nil, err
	}
	verifiedAAD, err := checkCRC("additional_authenticated_data",
		req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C())
	if err != nil {
		return nil, err
	}

	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	var key *cryptoKeyRecord
	var v *versionRecord
	if versionName.MatchString(req.GetName()) {
		key, v, err = s.cryptoKeyVersion(req.GetName())
		if err != nil {
			return nil, err
		}
	} else {
		key, err = s.cryptoKey(req.GetName())
		if err != nil {
			return nil, err
		}
		if v = key.version(key.Primary); v == nil {
			return nil, status.Errorf(codes.FailedPrecondition,
				"The request cannot be fulfilled. CryptoKey %s has no primary version.", key.Name)
		}
	}
	if v.State != enabled {
		return nil, wrongState(versionResource(key, v), v.State)
	}
	ciphertext, err := seal(v.Key, key.Name, uint32(v.ID), req.GetPlaintext(), req.GetAdditionalAuthenticatedData())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encryption failed: %v", err)
	}
	return &kmspb.EncryptResponse{
		Name:                    versionResource(key, v),
		Ciphertext:              ciphertext,
		CiphertextCrc32C:        wrapperspb.Int64(crc32c(ciphertext)),
		VerifiedPlaintextCrc32C: verifiedPlaintext,
		VerifiedAdditionalAuthenticatedDataCrc32C: verifiedAAD,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}, nil
}

func (s *service) Decrypt(_ context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	if _, err := checkCRC("ciphertext", req.GetCiphertext(), req.GetCiphertextCrc32C()); err != nil {
		return nil, err
	}
	if _, err := checkCRC("additional_authenticated_data",
		req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C()); err != nil {
		return nil, err
	}

	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	key, err := s.cryptoKey(req.GetName()) // a version name is refused: Decrypt takes the key
	if err != nil {
		return nil, err
	}
	const undecryptable = "Decryption failed: the ciphertext is invalid."
	id, err := ciphertextVersion(req.GetCiphertext())
	if err != nil || id > 1<<30 {
		return nil, invalid(undecryptable)
	}
	v := key.version(int(id))
	if v == nil {
		return nil, invalid(undecryptable)
	}
	if v.State != enabled {
		return nil, wrongState(versionResource(key, v), v.State)
	}
	plaintext, err := open(v.Key, key.Name, req.GetCiphertext(), req.GetAdditionalAuthenticatedData())
	if err != nil {
		return nil, invalid(undecryptable)
	}
	return &kmspb.DecryptResponse{
		Plaintext:       plaintext,
		PlaintextCrc32C: wrapperspb.Int64(crc32c(plaintext)),
		UsedPrimary:     v.ID == key.Primary,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}, nil
}
