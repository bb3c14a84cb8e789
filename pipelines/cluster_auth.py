"""How requests to a Kubeflow Pipelines endpoint authenticate, and what a refusal tells the user.

Credentials, first found wins: an explicit token (`--token` / `KFP_TOKEN`), the in-cluster service-account
token file (`KF_PIPELINES_SA_TOKEN_PATH`, else KFP's default path: the default inside a notebook), a Dex
login (`KFP_USERNAME` / `KFP_PASSWORD`, connector `KFP_DEX_CONNECTOR`, pipelines/dex_login.py: what a
default Kubeflow 26.03 accepts from outside the cluster), a Dex / oauth2-proxy session cookie
(`KFP_COOKIES`), or none. `KFP_SSL_CA_CERT` names the CA bundle of a gateway with a private CA.

A refusal names the mode tried and what works on the default overlay (kubeflow/manifests@26.03
`common/oauth2-proxy/overlays/m2m-dex-only`: only Dex-issued JWTs and the oauth2-proxy session cookie from
outside the cluster), never the secret and never the same token again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.cluster_errors import ClusterAuthError, ClusterError
from pipelines.dex_login import DexLogin, DexLoginError, session_cookies

TOKEN_ENV = "KFP_TOKEN"
COOKIES_ENV = "KFP_COOKIES"
USERNAME_ENV = "KFP_USERNAME"
PASSWORD_ENV = "KFP_PASSWORD"
CONNECTOR_ENV = "KFP_DEX_CONNECTOR"
# kfp.client.KF_PIPELINES_SA_TOKEN_ENV / KF_PIPELINES_SA_TOKEN_PATH (kfp/client/__init__.py), spelled out so
# that this module imports without kfp's client.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


@dataclass(frozen=True)
class Credentials:
    """How requests are authenticated; `source` names the setting it came from (never the secret)."""

    source: str
    token: str | None = field(default=None, repr=False)
    token_path: str | None = None
    cookies: str | None = field(default=None, repr=False)
    dex: DexLogin | None = None

    @property
    def renewable(self) -> bool:
        """A Dex login can be repeated; a given token or cookie cannot be made fresh here."""
        return self.dex is not None


def resolve_credentials(token: str | None = None, environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials a user expects, in order: explicit token, service-account token file, cookie, none."""
    env = os.environ if environ is None else environ
    if token:
        return Credentials("--token", token=token.strip())
    if env.get(TOKEN_ENV, "").strip():
        return Credentials(TOKEN_ENV, token=env[TOKEN_ENV].strip())
    explicit_path = env.get(SA_TOKEN_PATH_ENV, "").strip()
    path = explicit_path or DEFAULT_SA_TOKEN_PATH
    if Path(path).is_file():
        return Credentials(f"{SA_TOKEN_PATH_ENV}={path}" if explicit_path else path, token_path=path)
    if explicit_path:
        raise ClusterAuthError(f"{SA_TOKEN_PATH_ENV}={explicit_path}: no such file")
    username, password = env.get(USERNAME_ENV, "").strip(), env.get(PASSWORD_ENV, "")
    if username or password:
        if not (username and password):
            missing = PASSWORD_ENV if username else USERNAME_ENV
            raise ClusterAuthError(f"{USERNAME_ENV} and {PASSWORD_ENV} go together: {missing} is not set")
        connector = env.get(CONNECTOR_ENV, "").strip() or "local"
        try:
            dex = DexLogin(username, password, connector, _tls_verify(env))
        except DexLoginError as err:
            raise ClusterAuthError(str(err)) from None
        return Credentials(f"{USERNAME_ENV}={username} (Dex connector {connector})", dex=dex)
    if env.get(COOKIES_ENV, "").strip():
        return Credentials(COOKIES_ENV, cookies=env[COOKIES_ENV].strip())
    return Credentials("none")


CA_CERT_ENV = "KFP_SSL_CA_CERT"


def ca_cert(env: Mapping[str, str]) -> str | None:
    """KFP_SSL_CA_CERT: the CA bundle that signed the endpoint's certificate (a gateway with a private CA).

    Raises:
        ClusterError: it names no file.
    """
    path = env.get(CA_CERT_ENV, "").strip()
    if path and not Path(path).is_file():
        raise ClusterError(f"{CA_CERT_ENV}={path}: no such file")
    return path or None


def _tls_verify(env: Mapping[str, str]) -> bool | str:
    """requests' `verify` for the Dex login: KFP_SSL_CA_CERT (a CA bundle), else the system's trust."""
    return ca_cert(env) or True


def jwt_issuer(token: str) -> str | None:
    """The `iss` claim of a JWT, read without verifying it (for the message only)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("iss")
    except (IndexError, ValueError, AttributeError):
        return None


LOGIN_ADVICE = (
    f"From outside the cluster a default Kubeflow (oauth2-proxy overlay m2m-dex-only) accepts your Dex login: "
    f"set {USERNAME_ENV} and {PASSWORD_ENV} (what you log in to the Kubeflow UI with; {CONNECTOR_ENV}=ldap for an LDAP "
    f"account), or {COOKIES_ENV} to an oauth2_proxy_kubeflow session cookie from the browser"
)


def auth_hint(host: str, credentials: Credentials, answer: str = "") -> str:
    """What was tried, what the gateway said, and what works on a default 26.03 install (never the secret)."""
    answer = " ".join(answer.split())[:200]
    said = f" (the gateway said: {answer})" if answer and not answer.startswith("<") else ""
    token = credentials.token
    if credentials.token_path:
        with contextlib.suppress(OSError):
            token = Path(credentials.token_path).read_text().strip()
    if token is not None:
        issuer = jwt_issuer(token)
        if "issuer is not configured" in answer and credentials.token_path:
            return (
                f"{host} refused the service-account token from {credentials.source}: its issuer {issuer!r} "
                "is not one the Kubeflow gateway trusts (default overlay m2m-dex-only). Inside the cluster, talk "
                "to Kubeflow Pipelines directly, not through the gateway: "
                "KFP_HOST=http://ml-pipeline-ui.kubeflow.svc.cluster.local"
            )
        if "issuer is not configured" in answer:
            return (
                f"{host} refused the token from {credentials.source}: its issuer {issuer!r} is not one the "
                "Kubeflow gateway trusts. A default install (m2m-dex-only) trusts only tokens issued by Dex, "
                "so a service-account token (`kubectl create token`) works only inside the cluster (a "
                "notebook) or where an admin installed the m2m-dex-and-kind / m2m-dex-and-eks overlay. "
                f"Unset {TOKEN_ENV}. {LOGIN_ADVICE}"
            )
        return (
            f"{host} refused the token from {credentials.source}{said}. If it expired, a new one is needed; "
            f"if it is a service-account token used from outside the cluster, unset {TOKEN_ENV}. {LOGIN_ADVICE}"
        )
    if credentials.cookies is not None:
        return (
            f"{host} refused the session cookie from {COOKIES_ENV}{said}: oauth2-proxy sessions end after "
            f"24 h (cookie_expire). Set {USERNAME_ENV} and {PASSWORD_ENV} to log in (and again on expiry) "
            f"instead, or copy a fresh cookie; {TOKEN_ENV} works where the gateway trusts the token's issuer"
        )
    if credentials.dex is not None:
        return (
            f"{host} refused the Dex session of {credentials.dex.username!r}{said} right after logging in: "
            f"check that KFP_HOST is the Kubeflow address the login was made at"
        )
    return (
        f"{host} needs a login{said}. {LOGIN_ADVICE}. {TOKEN_ENV} (a bearer token) works where the gateway "
        "trusts its issuer: Dex's on every install, the cluster's with the m2m-dex-and-kind / -eks overlays"
    )


def dex_cookies(host: str, credentials: Credentials) -> str:
    assert credentials.dex is not None
    try:
        return session_cookies(host, credentials.dex)
    except DexLoginError as err:
        if err.transient:
            raise ClusterError(f"{err} (credentials from {credentials.source})", transient=True) from None
        raise ClusterAuthError(f"{err} (credentials from {credentials.source})") from None
