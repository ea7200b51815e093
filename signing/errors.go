package signing

import "errors"

// Errors of key files. Each is wrapped with the name of the file.
var (
	// ErrEmptyKeyring: the paths given to LoadKeyring hold no key at all.
	ErrEmptyKeyring = errors.New("keyring holds no public key")
	// ErrBadKeyFile: a key file does not parse as OpenPGP keys.
	ErrBadKeyFile = errors.New("not an OpenPGP key file")
	// ErrSecretInKeyring: a keyring file holds secret key material; a
	// keyring takes public keys only (`gpg --export`), so that a secret key
	// is never left lying in a configuration directory by mistake.
	ErrSecretInKeyring = errors.New("keyring file holds a secret key; export the public key with gpg --export")
)

// Reasons a signature does not count. A Problem's error wraps exactly one.
var (
	ErrUnknownKey       = errors.New("issuer not in the keyring")
	ErrBadSignature     = errors.New("bad signature (other bytes, or tampered)")
	ErrSignatureExpired = errors.New("signature expired")
	ErrKeyExpired       = errors.New("key expired")
	ErrKeyRevoked       = errors.New("key revoked")
	ErrUnsupported      = errors.New("unsupported algorithm")
	ErrCorrupt          = errors.New("corrupt signature packet")
)

// Errors of secret keys. Each is wrapped with the key file's name and,
// once the key is read, its fingerprint; never with the passphrase.
var (
	ErrNoSecretKey       = errors.New("no secret key in file")
	ErrSeveralKeys       = errors.New("several secret keys in file; export one with gpg --export-secret-keys FINGERPRINT")
	ErrPassphraseNeeded  = errors.New("secret key is protected by a passphrase and no passphrase file was given")
	ErrWrongPassphrase   = errors.New("wrong passphrase for secret key")
	ErrCannotSign        = errors.New("key cannot sign (no usable signing key)")
	ErrNoSecretSubkey    = errors.New("signing key's secret part is not in the file (gpg stub)")
	errPassphraseFileBad = errors.New("passphrase file")
)
