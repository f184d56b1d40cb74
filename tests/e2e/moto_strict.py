"""moto's server, with KMS refusing to use a disabled key as AWS KMS does.

moto keeps a disabled key's state but still encrypts and decrypts with it; real KMS answers
`DisabledException` (see the Encrypt, Decrypt and ReEncrypt API references). The tests need
that answer to prove that disabling the customer's KEK cuts airlock off, so this wrapper adds
the check and then runs moto's own server unchanged: `python moto_strict.py -H HOST -p PORT`.
"""
import sys

from moto.core.exceptions import JsonRESTError
from moto.kms.models import KmsBackend
from moto.server import main


class DisabledException(JsonRESTError):
    def __init__(self, arn):
        super().__init__("DisabledException", f"{arn} is disabled.")


def _check(backend, key_id):
    key = backend.keys[backend.any_id_to_key_id(key_id)]
    if key.key_state != "Enabled":
        raise DisabledException(key.arn)


_encrypt, _decrypt = KmsBackend.encrypt, KmsBackend.decrypt


def encrypt(self, key_id, plaintext, encryption_context):
    _check(self, key_id)
    return _encrypt(self, key_id, plaintext, encryption_context)


def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
    plaintext, arn = _decrypt(self, ciphertext_blob, encryption_context, key_id)
    _check(self, arn)
    return plaintext, arn


KmsBackend.encrypt, KmsBackend.decrypt = encrypt, decrypt  # re_encrypt goes through both

if __name__ == "__main__":
    main(sys.argv[1:])
