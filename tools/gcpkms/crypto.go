// The emulator's ciphertext format and CRC32C.
//
// A ciphertext is
//
//	0x01 (format) || version id (uint32, big-endian) || nonce (12) || AES-256-GCM output
//
// where the GCM associated data binds the crypto key's resource name, the version id
// and the caller's additional authenticated data. So a ciphertext does not decrypt
// under another crypto key, with its version id changed, or with other AAD. The
// version id is readable by anyone (Decrypt needs it to pick the key); Cloud KMS's
// own format is opaque and different, and nothing may depend on this one.

package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
)

const (
	ciphertextFormat = 0x01
	keySize          = 32
	nonceSize        = 12
	tagSize          = 16
	headerSize       = 1 + 4 + nonceSize
	// Cloud KMS limits plaintext and additional authenticated data to 64 KiB each.
	maxPlaintext = 64 * 1024
	maxAAD       = 64 * 1024
)

var (
	aadDomain          = []byte("securekeys.io/gcpkms-test-double\x00")
	castagnoli         = crc32.MakeTable(crc32.Castagnoli)
	errMalformedCipher = errors.New("malformed ciphertext")
)

func crc32c(data []byte) int64 { return int64(crc32.Checksum(data, castagnoli)) }

func newKeyMaterial() ([]byte, error) {
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return key, nil
}

func internalAAD(keyName string, version uint32, aad []byte) []byte {
	out := make([]byte, 0, len(aadDomain)+2+len(keyName)+4+len(aad))
	out = append(out, aadDomain...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(keyName)))
	out = append(out, keyName...)
	out = binary.BigEndian.AppendUint32(out, version)
	return append(out, aad...)
}

func gcm(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func seal(key []byte, keyName string, version uint32, plaintext, aad []byte) ([]byte, error) {
	aead, err := gcm(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, headerSize, headerSize+len(plaintext)+tagSize)
	out[0] = ciphertextFormat
	binary.BigEndian.PutUint32(out[1:5], version)
	if _, err := rand.Read(out[5:headerSize]); err != nil {
		return nil, err
	}
	return aead.Seal(out, out[5:headerSize], plaintext, internalAAD(keyName, version, aad)), nil
}

// ciphertextVersion reads the version id a ciphertext names, without authenticating it.
func ciphertextVersion(ciphertext []byte) (uint32, error) {
	if len(ciphertext) < headerSize+tagSize || ciphertext[0] != ciphertextFormat {
		return 0, errMalformedCipher
	}
	return binary.BigEndian.Uint32(ciphertext[1:5]), nil
}

func open(key []byte, keyName string, ciphertext, aad []byte) ([]byte, error) {
	version, err := ciphertextVersion(ciphertext)
	if err != nil {
		return nil, err
	}
	aead, err := gcm(key)
	if err != nil {
		return nil, err
	}
	nonce := ciphertext[5:headerSize]
	return aead.Open(nil, nonce, ciphertext[headerSize:], internalAAD(keyName, version, aad))
}
