"""The official Python SDKs (azure-identity, azure-keyvault-secrets) against the
emulator, configured only as a user would for any Azure cloud: the authority host,
the vault URL and the emulator's CA (REQUESTS_CA_BUNDLE). No api-version is pinned.

Run by emulator/tests/python_sdk.rs, which passes the endpoints in the environment:
AUTHORITY_HOST, TENANT_ID, CLIENT_ID, CLIENT_SECRET, VAULT_URL. Exits non-zero on
the first surprise; the last line of stdout is a JSON summary of what it saw.
"""

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
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

AUTHORITY = os.environ["AUTHORITY_HOST"]  # https://localhost:<port>/
TENANT = os.environ["TENANT_ID"]
CLIENT_ID = os.environ["CLIENT_ID"]
CLIENT_SECRET = os.environ["CLIENT_SECRET"]
VAULT_URL = os.environ["VAULT_URL"]
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

print(json.dumps({"api_versions": sorted(seen["api_versions"]), "steps": seen["steps"]}))
