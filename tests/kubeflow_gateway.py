"""The front door of a Kubeflow Community Distribution 26.03 install, for tests/kfp_api_server.py.

What a request to the Istio ingress gateway meets before it reaches the KFP API, each behaviour taken from
kubeflow/manifests (now kubeflow/community-distribution) at tag 26.03:

- `example/kustomization.yaml`: the default install uses `common/oauth2-proxy/overlays/m2m-dex-only` and
  `common/dex/overlays/oauth2-proxy`; `m2m-dex-and-kind` / `m2m-dex-and-eks` are commented alternatives.
- Paths `/dex/*`, `/dex/**` and `/oauth2/*` skip every check
  (`common/oauth2-proxy/components/istio-external-auth/authorizationpolicy.istio-ingressgateway-*.yaml`
  `notPaths`; `common/oauth2-proxy/base/oauth2_proxy.cfg` `skip_auth_routes = ["^/dex/"]`).
- A request WITH an `Authorization` header bypasses oauth2-proxy (`authorizationpolicy.istio-ingressgateway-
  oauth2-proxy.yaml`: `request.headers[authorization] notValues ["*"]`) and must carry a JWT whose issuer
  a RequestAuthentication lists: on m2m-dex-only only Dex's, `http://dex.auth.svc.cluster.local:5556/dex`
  (`components/istio-external-auth/requestauthentication.dex-jwt.yaml`, user from the `email` claim);
  m2m-dex-and-kind adds `https://kubernetes.default.svc.cluster.local` and `https://kubernetes.default.svc`
  (`overlays/m2m-dex-and-kind/kustomization.yaml` patching `components/istio-m2m/requestauthentication.yaml`,
  user from `sub`). Envoy's jwt_authn answers 401 with the text "Jwt issuer is not configured" for any
  other issuer (the reply kubeflow/pipelines#11025 shows for a `kubectl create token` token), "Jwt is
  expired", "Jwt verification fails", "Jwt is not in the form of Header.Payload.Signature with two dots
  and 3 sections". A request with no verified JWT is denied 403 "RBAC: access denied"
  (`authorizationpolicy.istio-ingressgateway-require-jwt.yaml`).
- A request WITHOUT it goes to oauth2-proxy (`base/oauth2_proxy.cfg`): a valid `oauth2_proxy_kubeflow`
  cookie (`cookie_name`) passes, with a Dex JWT set as Authorization (`set_authorization_header = true`);
  the cookie lasts `cookie_expire = "24h"` and is not refreshed (`cookie_refresh = 0`). Without a valid
  one, paths matching `api_routes` ("/api/", "/apis/", "^/ml_metadata") get 401, others oauth2-proxy's
  sign-in page (`skip_provider_button = false`), answered 403 through Istio's ext-authz (the mesh config's
  `headersToDownstreamOnDeny` passes content-type and set-cookie, not a Location:
  `common/oauth2-proxy/components/istio-external-auth-patches/patches/cm.enable-oauth2-proxy.yaml`).
- `/oauth2/start?rd=<path>` redirects to `login_url = "/dex/auth"` with `redirect_url = "/oauth2/callback"`
  and a CSRF cookie; `/oauth2/callback` redeems the code, sets the session cookie and redirects to `rd`.
- Dex (`common/dex/overlays/oauth2-proxy/config-map.yaml`): `enablePasswordDB: true` (connector `local`,
  static passwords, login by email), `skipApprovalScreen: true`. Dex (dexidp/dex at v2.45.0, the image
  `common/dex/base/deployment.yaml` pins; `server/handlers.go`)
  sends `/auth` straight to the only connector, else shows the connector list; a password connector's
  `/auth/<id>` redirects to `/auth/<id>/login?state=<request>`, whose form POSTs `login` and `password`;
  a wrong pair re-renders the form (200, "Invalid ..."), a right one 303s to `/approval`, which (approval
  skipped) 303s to the client's redirect URI with a code. An LDAP connector (commonly id `ldap`) logs in by
  its username prompt the same way.

Signatures here are HMAC-SHA256 under a per-issuer secret (Dex and Kubernetes sign RS256): what the tests
need is that a token from an unlisted issuer, a forged one and an expired one are told apart as Envoy does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

DEX_ISSUER = "http://dex.auth.svc.cluster.local:5556/dex"
KIND_ISSUERS = ("https://kubernetes.default.svc.cluster.local", "https://kubernetes.default.svc")
COOKIE_NAME = "oauth2_proxy_kubeflow"
CSRF_COOKIE = f"{COOKIE_NAME}_csrf"
API_ROUTES = ("/api/", "/apis/")  # plus "^/ml_metadata"
OVERLAYS = ("m2m-dex-only", "m2m-dex-and-kind")
SIGN_IN_PAGE = (
    b"<html><body><form action='/oauth2/start'><button>Sign in with Dex</button></form></body></html>"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secret(issuer: str) -> bytes:
    return hashlib.sha256(f"signing key of {issuer}".encode()).digest()


def make_jwt(issuer: str, claims: dict[str, Any], lifetime_s: float = 3600, forged: bool = False) -> str:
    """A JWT from `issuer` (HS256 under the issuer's test secret, or a wrong one when `forged`)."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"iss": issuer, "iat": now, "exp": now + int(lifetime_s), **claims}).encode())
    key = b"not the issuer's key" if forged else _secret(issuer)
    signature = _b64(hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def kubernetes_token(namespace: str, service_account: str, issuer: str = KIND_ISSUERS[0]) -> str:
    """What `kubectl -n <namespace> create token <service_account>` prints: a JWT of the cluster's issuer."""
    return make_jwt(issuer, {"sub": f"system:serviceaccount:{namespace}:{service_account}"})


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Gateway:
    """The istio-ingressgateway + oauth2-proxy + Dex of a 26.03 install, in front of the KFP API.

    `users` are Dex static passwords (email -> password), `ldap_users` an LDAP connector's (username ->
    (email, password)); with LDAP users Dex offers two connectors and shows its connector list.
    `cookie_expire_s` is oauth2-proxy's cookie_expire (24 h), shortened by tests.
    """

    overlay: str = "m2m-dex-only"
    users: dict[str, str] = field(default_factory=lambda: {"user@example.com": "12341234"})
    ldap_users: dict[str, tuple[str, str]] = field(default_factory=dict)
    cookie_expire_s: float = 24 * 3600
    skip_approval_screen: bool = True
    sessions: dict[str, tuple[str, float]] = field(default_factory=dict)  # cookie value -> (email, expiry)
    logins: list[str] = field(default_factory=list)  # who logged in, in order
    _auth_requests: dict[str, dict] = field(default_factory=dict)
    _codes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.overlay not in OVERLAYS:
            raise ValueError(f"overlay {self.overlay!r}: one of {OVERLAYS}")

    # --- JWT at the gateway (RequestAuthentication + AuthorizationPolicy) ---
    def issuers(self) -> dict[str, str]:
        """Trusted issuer -> the claim that becomes kubeflow-userid."""
        trusted = {DEX_ISSUER: "email"}
        if self.overlay == "m2m-dex-and-kind":
            trusted |= dict.fromkeys(KIND_ISSUERS, "sub")
        return trusted

    def dex_token(self, email: str, lifetime_s: float = 24 * 3600) -> str:
        return make_jwt(DEX_ISSUER, {"email": email, "groups": []}, lifetime_s)

    def _verify_jwt(self, token: str) -> tuple[str | None, Reply | None]:
        parts = token.split(".")
        if len(parts) != 3:
            return None, Reply(
                401, b"Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            )
        try:
            claims = json.loads(_unb64(parts[1]))
        except ValueError:
            return None, Reply(401, b"Jwt payload is an invalid JSON")
        claim = self.issuers().get(claims.get("iss", ""))
        if claim is None:
            return None, Reply(401, b"Jwt issuer is not configured")
        expected = hmac.new(
            _secret(claims["iss"]), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(_unb64(parts[2]), expected):
            return None, Reply(401, b"Jwt verification fails")
        if claims.get("exp", 0) < time.time():
            return None, Reply(401, b"Jwt is expired")
        return str(claims.get(claim, "")), None

    # --- the request path ---
    def check(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes
    ) -> tuple[str | None, Reply | None]:
        """(user, None) to pass the request on as `user`, or (None, the gateway's own reply)."""
        if path.startswith("/dex/") or path == "/dex":
            return None, self._dex(method, path, query, body)
        if path.startswith("/oauth2/"):
            return None, self._oauth2(path, query, headers)
        authorization = headers.get("Authorization")
        if authorization is not None:  # oauth2-proxy is skipped; RequestAuthentication decides
            if not authorization.startswith("Bearer "):
                return None, Reply(403, b"RBAC: access denied")
            return self._verify_jwt(authorization[len("Bearer ") :])
        user = self._session_user(headers)
        if user is not None:
            return user, None
        if any(route in path for route in API_ROUTES) or path.startswith("/ml_metadata"):
            return None, Reply(401, b"Unauthorized")
        return None, Reply(403, SIGN_IN_PAGE, "text/html")

    def _cookies(self, headers: Any) -> dict[str, str]:
        jar = SimpleCookie()
        jar.load(headers.get("Cookie") or "")
        return {k: v.value for k, v in jar.items()}

    def _session_user(self, headers: Any) -> str | None:
        session = self.sessions.get(self._cookies(headers).get(COOKIE_NAME, ""))
        if session is None or session[1] < time.time():
            return None
        return session[0]

    def _oauth2(self, path: str, query: dict[str, str], headers: Any) -> Reply:
        if path == "/oauth2/start":
            state = secrets.token_hex(8)
            target = "/dex/auth?" + urllib.parse.urlencode(
                {
                    "client_id": "kubeflow-oidc-authservice",
                    "redirect_uri": "/oauth2/callback",
                    "response_type": "code",
                    "scope": "profile email groups openid",
                    "state": f"{state}:{query.get('rd', '/')}",
                }
            )
            return Reply(
                302, headers=[("Location", target), ("Set-Cookie", f"{CSRF_COOKIE}={state}; Path=/")]
            )
        if path == "/oauth2/callback":
            state, _, rd = query.get("state", "").partition(":")
            email = self._codes.pop(query.get("code", ""), None)
            if email is None or self._cookies(headers).get(CSRF_COOKIE) != state:
                return Reply(403, b"Login Failed: Unable to find a valid CSRF token.")
            value = secrets.token_urlsafe(24)
            self.sessions[value] = (email, time.time() + self.cookie_expire_s)
            self.logins.append(email)
            return Reply(
                302,
                headers=[
                    ("Location", rd or "/"),
                    (
                        "Set-Cookie",
                        f"{COOKIE_NAME}={value}; Path=/; HttpOnly; Max-Age={int(self.cookie_expire_s) or 1}",
                    ),
                    ("Set-Cookie", f"{CSRF_COOKIE}=; Path=/; Max-Age=0"),
                ],
            )
        return Reply(404, b"404 page not found")

    def _connectors(self) -> list[str]:
        return ["local", "ldap"] if self.ldap_users else ["local"]

    def _dex(self, method: str, path: str, query: dict[str, str], body: bytes) -> Reply:
        parts = path.strip("/").split("/")  # dex, auth, <connector>, login
        if parts[:2] == ["dex", "auth"] and len(parts) == 2:
            request_id = secrets.token_hex(8)
            self._auth_requests[request_id] = dict(query)
            connectors = self._connectors()
            if len(connectors) == 1:
                return Reply(302, headers=[("Location", f"/dex/auth/{connectors[0]}?state={request_id}")])
            links = "".join(
                f"<a href='/dex/auth/{c}?state={request_id}'>Log in with {c}</a>" for c in connectors
            )
            return Reply(200, f"<html><body>{links}</body></html>".encode(), "text/html")
        if parts[:2] == ["dex", "auth"] and len(parts) == 3 and parts[2] in self._connectors():
            if query.get("state") not in self._auth_requests:  # the docs' rewrite of /auth?<original query>
                request_id = secrets.token_hex(8)
                self._auth_requests[request_id] = dict(query)
                query = {"state": request_id}
            return Reply(
                302, headers=[("Location", f"/dex/auth/{parts[2]}/login?back=&state={query['state']}")]
            )
        if parts[:2] == ["dex", "auth"] and len(parts) == 4 and parts[3] == "login":
            request = self._auth_requests.get(query.get("state", ""))
            if request is None:
                return Reply(400, b"Invalid 'state' parameter provided: not found", "text/html")
            form = b"<html><body><form method='post'><input name='login'/><input name='password'/></form></body></html>"
            if method == "GET":
                return Reply(200, form, "text/html")
            fields = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()}
            email = self._password_ok(parts[2], fields.get("login", ""), fields.get("password", ""))
            if email is None:
                return Reply(200, b"<html><body>Invalid Email Address and password" + form[12:], "text/html")
            request["email"] = email
            return Reply(303, headers=[("Location", f"/dex/approval?req={query['state']}&hmac=x")])
        if parts == ["dex", "approval"]:
            request = self._auth_requests.get(query.get("req", ""))
            if request is None or "email" not in request:
                return Reply(400, b"Invalid request", "text/html")
            if method == "GET" and not self.skip_approval_screen:
                return Reply(
                    200,
                    b"<html><form method='post'><button name='approval' value='approve'/></form></html>",
                    "text/html",
                )
            if method == "POST" and urllib.parse.parse_qs(body.decode()).get("approval") != ["approve"]:
                return Reply(200, b"<html>Access denied</html>", "text/html")
            del self._auth_requests[query["req"]]
            code = secrets.token_hex(8)
            self._codes[code] = request["email"]
            target = f"{request['redirect_uri']}?" + urllib.parse.urlencode(
                {"code": code, "state": request["state"]}
            )
            return Reply(303, headers=[("Location", target)])
        return Reply(404, b"Not Found", "text/html")

    def _password_ok(self, connector: str, login: str, password: str) -> str | None:
        if connector == "local":
            return login if login and self.users.get(login) == password else None
        email, expected = self.ldap_users.get(login, ("", None))
        return email if expected is not None and expected == password else None
