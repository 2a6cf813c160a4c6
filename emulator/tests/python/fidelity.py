"""The official Python SDKs (azure-identity, azure-keyvault-secrets) against the
emulator, configured only as a user would for any Azure cloud: the authority host,
the vault URL and the emulator's CA (REQUESTS_CA_BUNDLE). No api-version is pinned.

Run by emulator/tests/python_sdk.rs, which passes the endpoints in the environment:
AUTHORITY_HOST, TENANT_ID, CLIENT_ID, CLIENT_SECRET, VAULT_URL, CONTROL_URL (the
emulator's control API, for a token rollover), and IDENTITY_ENDPOINT/IDENTITY_HEADER
for the host's managed identity. Exits non-zero on
the first surprise; the last line of stdout is a JSON summary of what it saw.
Certificates are made with `cryptography` and imported with the official
azure-keyvault-certificates client; their secrets are read back as PKCS#12 and
PEM (outContentType).
"""

import base64
import datetime
import json
import os
import sys

import msal
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    WellKnownIssuerNames,
)
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

AUTHORITY = os.environ["AUTHORITY_HOST"]  # https://localhost:<port>/
TENANT = os.environ["TENANT_ID"]
CLIENT_ID = os.environ["CLIENT_ID"]
CLIENT_SECRET = os.environ["CLIENT_SECRET"]
VAULT_URL = os.environ["VAULT_URL"]
CONTROL_URL = os.environ["CONTROL_URL"]
SCOPE = "https://vault.azure.net/.default"

seen = {"api_versions": set(), "steps": []}


def step(name):
    seen["steps"].append(name)
    print(f"ok: {name}", file=sys.stderr)


def record(response):
    """raw_response_hook: remembers the api-version of every vault request."""
    query = response.http_request.url.split("?", 1)[-1]
    for pair in query.split("&"):
        if pair.startswith("api-version="):
            seen["api_versions"].add(pair.split("=", 1)[1])


def expect(exception, call):
    try:
        call()
    except exception as error:
        return error
    raise AssertionError(f"expected {exception.__name__}")


# MSAL itself, with instance discovery sent to the emulator (MSAL sends it to
# login.microsoftonline.com unless told otherwise): instance discovery, OpenID
# configuration, token.
app = msal.ConfidentialClientApplication(
    CLIENT_ID,
    client_credential=CLIENT_SECRET,
    authority=f"{AUTHORITY}{TENANT}",
    instance_discovery=f"{AUTHORITY}common/discovery/instance",
    http_client=requests.Session(),
)
result = app.acquire_token_for_client([SCOPE])
assert "access_token" in result, result
step("msal: instance discovery + openid-configuration + client credentials")

# azure-identity: the authority host is all it needs (plus no instance discovery,
# which would go to the public cloud).
credential = ClientSecretCredential(
    TENANT, CLIENT_ID, CLIENT_SECRET, authority=AUTHORITY, disable_instance_discovery=True
)
assert credential.get_token(SCOPE).token
step("azure-identity: ClientSecretCredential")

wrong = ClientSecretCredential(
    TENANT, CLIENT_ID, "wrong", authority=AUTHORITY, disable_instance_discovery=True
)
error = expect(ClientAuthenticationError, lambda: wrong.get_token(SCOPE))
assert "AADSTS7000215" in str(error), error
nowhere = ClientSecretCredential(
    "00000000-0000-0000-0000-000000000000",
    CLIENT_ID,
    CLIENT_SECRET,
    authority=AUTHORITY,
    disable_instance_discovery=True,
)
error = expect(ClientAuthenticationError, lambda: nowhere.get_token(SCOPE))
assert "authority" in str(error).lower(), error
step("azure-identity: wrong secret (AADSTS7000215) and unknown tenant refused")

client = SecretClient(
    VAULT_URL, credential, verify_challenge_resource=False, raw_response_hook=record
)

secret = client.get_secret("db-password")
assert (secret.value, secret.properties.content_type) == ("s3cr3t", "text/plain"), secret
assert secret.properties.tags == {"env": "prod"}, secret.properties.tags
assert secret.properties.enabled and secret.properties.version
step("get")

written = [client.set_secret("py-rotated", f"v{n}", content_type="text/plain") for n in range(3)]
assert client.get_secret("py-rotated").value == "v2"
assert client.get_secret("py-rotated", written[0].properties.version).value == "v0"
step("set (three versions) and get by version")

pages = list(client.list_properties_of_secret_versions("py-rotated", max_page_size=2).by_page())
versions = {item.version for page in pages for item in page}
assert versions == {w.properties.version for w in written}, versions
assert len(pages) == 2, len(pages)
step("list versions, paged")

pages = list(client.list_properties_of_secrets(max_page_size=1).by_page())
names = [item.name for page in pages for item in page]
assert {"db-password", "api-key", "py-rotated"} <= set(names), names
assert len(pages) == len(names), (len(pages), names)
step("list secrets, one per page")

client.update_secret_properties("py-rotated", enabled=False)
error = expect(HttpResponseError, lambda: client.get_secret("py-rotated"))
assert error.status_code == 403 and "disabled" in error.message, error
step("disabled secret refused (403)")

error = expect(ResourceNotFoundError, lambda: client.get_secret("missing"))
assert error.status_code == 404 and error.error.code == "SecretNotFound", error
step("missing secret (404 SecretNotFound)")

# A token rollover revokes the client's cached token. Key Vault answers the next
# request with a claims challenge (continuous access evaluation); the SDK passes
# the claims to azure-identity, which bypasses its cache and gets a new token.
tokens = []
credential_with_log = ClientSecretCredential(
    TENANT, CLIENT_ID, CLIENT_SECRET, authority=AUTHORITY, disable_instance_discovery=True
)
original_get_token_info = credential_with_log.get_token_info


def logged_get_token_info(*scopes, options=None):
    token = original_get_token_info(*scopes, options=options)
    tokens.append((token.token, (options or {}).get("claims")))
    return token


credential_with_log.get_token_info = logged_get_token_info
revocable = SecretClient(VAULT_URL, credential_with_log, verify_challenge_resource=False)
assert revocable.get_secret("db-password").value == "s3cr3t"
requests.post(f"{CONTROL_URL}tokens/rollover", timeout=10).raise_for_status()
assert revocable.get_secret("db-password").value == "s3cr3t"
assert len(tokens) == 2 and tokens[0][0] != tokens[1][0], [claims for _, claims in tokens]
assert tokens[1][1] and "nbf" in json.loads(tokens[1][1])["access_token"], tokens[1][1]
step("token rollover: claims challenge, new token with the claims, same client recovers")


# Managed identity (IDENTITY_ENDPOINT/IDENTITY_HEADER point azure-identity at the
# emulator's IMDS endpoint), the host's system-assigned identity.
managed = SecretClient(VAULT_URL, ManagedIdentityCredential(), verify_challenge_resource=False)
assert managed.get_secret("db-password").value == "s3cr3t"
step("managed identity (IMDS)")


def self_signed(name, key):
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def same_key(a, b):
    return a.private_numbers() == b.private_numbers()


certificates = CertificateClient(
    VAULT_URL, credential, verify_challenge_resource=False, raw_response_hook=record
)
PEM_TYPE, PKCS12_TYPE = "application/x-pem-file", "application/x-pkcs12"

# PKCS#12 with a password, and without, as cryptography writes them.
for name, encryption, password in [
    ("py-pfx", serialization.BestAvailableEncryption(b"pfx-password"), "pfx-password"),
    ("py-open-pfx", serialization.NoEncryption(), None),
]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(f"{name}.example", key)
    pfx = pkcs12.serialize_key_and_certificates(b"x", key, cert, None, encryption)
    imported = certificates.import_certificate(name, pfx, password=password)
    assert imported.cer == cert.public_bytes(serialization.Encoding.DER), name
    assert imported.properties.x509_thumbprint == cert.fingerprint(hashes.SHA1()), name
    assert imported.policy.content_type == CertificateContentType.pkcs12, imported.policy
    assert certificates.get_certificate(name).cer == imported.cer
    secret = client.get_secret(name)
    assert secret.properties.content_type == PKCS12_TYPE, secret.properties.content_type
    assert secret.properties.managed and secret.properties.key_id == imported.key_id, name
    got_key, got_cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
    assert got_cert == cert and same_key(got_key, key), name
    as_pem = client.get_secret(name, out_content_type=PEM_TYPE)
    assert as_pem.properties.content_type == PEM_TYPE
    pem = as_pem.value.encode()
    assert same_key(serialization.load_pem_private_key(pem, None), key)
    assert x509.load_pem_x509_certificate(pem) == cert
step("certificates: import PKCS#12 with and without password, get, secret as PKCS#12 and PEM")

# PEM with an EC key and a chain (leaf, issuer).
issuer_key = ec.generate_private_key(ec.SECP384R1())
issuer = self_signed("py-issuer.example", issuer_key)
key = ec.generate_private_key(ec.SECP256R1())
now = datetime.datetime.now(datetime.timezone.utc)
leaf = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "py-pem.example")]))
    .issuer_name(issuer.subject)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=1))
    .not_valid_after(now + datetime.timedelta(days=30))
    .sign(issuer_key, hashes.SHA256())
)
pem = (
    key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    + leaf.public_bytes(serialization.Encoding.PEM)
    + issuer.public_bytes(serialization.Encoding.PEM)
)
policy = CertificatePolicy(
    issuer_name=WellKnownIssuerNames.self,
    subject="CN=py-pem.example",
    content_type=CertificateContentType.pem,
)
imported = certificates.import_certificate("py-pem", pem, policy=policy)
assert imported.policy.content_type == CertificateContentType.pem, imported.policy
assert imported.policy.key_type == "EC" and imported.policy.key_curve_name == "P-256", imported.policy
secret = client.get_secret("py-pem")
assert secret.properties.content_type == PEM_TYPE and secret.properties.managed
chain = x509.load_pem_x509_certificates(secret.value.encode())
assert chain == [leaf, issuer], chain
assert same_key(serialization.load_pem_private_key(secret.value.encode(), None), key)
as_pfx = client.get_secret("py-pem", out_content_type=PKCS12_TYPE)
got_key, got_cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(as_pfx.value), None)
assert got_cert == leaf and extra == [issuer] and same_key(got_key, key)
step("certificates: import PEM (EC key, chain), secret as PEM and PKCS#12")

print(json.dumps({"api_versions": sorted(seen["api_versions"]), "steps": seen["steps"]}))
