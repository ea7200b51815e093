// Package signing reads OpenPGP keys and makes and checks OpenPGP detached
// signatures over sstate objects, compatible with bitbake's SSTATE_SIG_KEY
// (.sig files made by `gpg --detach-sign`) and SSTATE_VERIFY_SIG (checked
// with `gpg --verify`).
//
// What a signature covers: exactly the bytes of one object, as stored (a
// binary detached signature, signature type 0x00; text-mode signatures, type
// 0x01, are checked over the canonical text form as OpenPGP defines it). No
// name, size or digest is covered: whoever binds a signature to an object
// name (the index, the .sig beside the object) vouches for that binding.
//
// Who signed: a signer is a primary key of the keyring. A signature made by
// a signing subkey counts as a signature of its primary key, so two
// signatures by two subkeys of one key, or the same signature twice, are one
// signer: [Keyring.Verify] returns distinct primary keys, which is what a
// k-of-n sign-off policy counts. A signature whose issuer is not in the
// keyring, or that fails for any reason, never counts; it is reported as a
// [Problem] whose error wraps one of the sentinel errors (ErrUnknownKey,
// ErrBadSignature, ErrSignatureExpired, ErrKeyExpired, ErrKeyRevoked,
// ErrUnsupported, ErrCorrupt).
//
// Several signatures may be concatenated (the stored .sig followed by
// sign-offs): every packet is checked and the signed bytes are read once,
// through one hash per hash algorithm the signatures ask for. Callers that
// already stream the bytes (to check their SHA-256, to serve them) use
// [Keyring.Prepare] and feed the same bytes to the returned [Check].
//
// Secrets: errors and Problems name files, fingerprints and key ids, never
// key material or passphrases; nothing in this package logs.
package signing
