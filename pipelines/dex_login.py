"""Log in to a Kubeflow through Dex as the browser does, to get the oauth2-proxy session cookie.

The default Kubeflow 26.03 front door (oauth2-proxy + Dex, overlay `m2m-dex-only`) trusts only Dex-issued
JWTs and its own session cookie from outside the cluster, so a user's username and password are what
works from a laptop. The flow is the one the Kubeflow docs give for the Pipelines SDK outside the cluster
(kubeflow/website, content/en/docs/components/pipelines/user-guides/core-functions/connect-api.md,
"Kubeflow Community Distribution - Outside the Cluster"):

1. GET the KFP endpoint; oauth2-proxy answers its sign-in page (403), so start the login at
   `/oauth2/start?rd=<path>`, which redirects to Dex's `/dex/auth`.
2. Dex shows its connector list when it has several: pick the connector (`local` for static passwords,
   `ldap` for an LDAP connector; KFP_DEX_CONNECTOR) by going to `/auth/<connector>`, which redirects to
   that connector's `/auth/<connector>/login` form.
3. POST `login` and `password` there. No redirect back means Dex re-rendered the form: wrong credentials.
4. An approval page, where Dex shows one, is approved; Dex then redirects to `/oauth2/callback`, where
   oauth2-proxy sets its session cookie (`oauth2_proxy_kubeflow`) and redirects to the endpoint.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

SESSION_COOKIE = "oauth2_proxy_kubeflow"  # cookie_name in common/oauth2-proxy/base/oauth2_proxy.cfg
_CONNECTOR_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


class DexLoginError(RuntimeError):
    """The login did not end with a session; the message says which step and what to check.

    `transient`: the gateway or Dex was unavailable (5xx, no connection), so trying again later may work.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class DexLogin:
    """Who logs in where; `connector` is the Dex connector id (`local`, `ldap`, ...)."""

    username: str
    password: str = field(repr=False)
    connector: str = "local"
    verify: bool | str = True  # requests' verify: False, True or a CA bundle path

    def __post_init__(self) -> None:
        if not _CONNECTOR_ID.match(self.connector):
            raise DexLoginError(
                f"KFP_DEX_CONNECTOR={self.connector!r} is not a Dex connector id (e.g. local, ldap)"
            )


def session_cookies(host: str, login: DexLogin, timeout_s: float = 30.0) -> str:
    """Log in through Dex at `host` (the KFP endpoint) and return the cookies as a `Cookie` header value.

    Returns "" when `host` answers without any login (no Dex in front of it).

    Raises:
        DexLoginError: a step of the flow failed or Dex refused the username and password.
    """
    import requests

    with requests.Session() as session:
        session.headers["Accept"] = "text/html"

        def available(response: requests.Response) -> requests.Response:
            if response.status_code >= 500:
                raise DexLoginError(
                    f"logging in at {host}: HTTP {response.status_code} from {_no_query(response.url)} (the "
                    "gateway or Dex is unavailable)",
                    transient=True,
                )
            return response

        def get(url: str) -> requests.Response:
            return available(session.get(url, allow_redirects=True, verify=login.verify, timeout=timeout_s))

        try:
            response = get(host)
            if response.status_code == 403:  # oauth2-proxy's sign-in page: start the login ourselves
                start = urllib.parse.urlsplit(response.url)
                response = get(
                    start._replace(
                        path="/oauth2/start", query=urllib.parse.urlencode({"rd": start.path})
                    ).geturl()
                )
            if response.status_code != 200:
                raise DexLoginError(
                    f"logging in at {host}: HTTP {response.status_code} from {_no_query(response.url)}; "
                    "is KFP_HOST the Kubeflow address (e.g. https://kubeflow.example.com/pipeline)?"
                )
            if not response.history:
                logger.info("%s answered without a login: no Dex session needed", host)
                return ""
            login_url = _login_form_url(response.url, login.connector)
            offered = re.search(r"/auth/([^/]+)/login$", urllib.parse.urlsplit(login_url).path)
            if offered and offered.group(1) != login.connector:
                raise DexLoginError(
                    f"logging in at {host}: Dex offers only the connector {offered.group(1)!r}, not "
                    f"{login.connector!r}: set KFP_DEX_CONNECTOR={offered.group(1)}"
                )
            if login_url != response.url:
                response = get(login_url)
                if response.status_code != 200 or not re.search(
                    r"/auth/[^/]+/login$", urllib.parse.urlsplit(response.url).path
                ):
                    raise DexLoginError(
                        f"logging in at {host}: Dex has no login form for connector {login.connector!r} "
                        f"(HTTP {response.status_code} at {_no_query(response.url)}); set KFP_DEX_CONNECTOR to "
                        "the connector your Kubeflow login page offers (local for Dex static passwords, ldap, ...)"
                    )
                login_url = response.url
            response = available(
                session.post(
                    login_url,
                    data={"login": login.username, "password": login.password},
                    allow_redirects=True,
                    verify=login.verify,
                    timeout=timeout_s,
                )
            )
            if response.status_code == 200 and not response.history:
                raise DexLoginError(
                    f"Dex at {_no_query(login_url)} refused the login of {login.username!r} (connector "
                    f"{login.connector!r}): check KFP_USERNAME and KFP_PASSWORD (Dex's static users log in by "
                    "email; for an LDAP account set KFP_DEX_CONNECTOR=ldap)"
                )
            if urllib.parse.urlsplit(response.url).path.endswith("/approval"):
                response = available(
                    session.post(
                        response.url,
                        data={"approval": "approve"},
                        allow_redirects=True,
                        verify=login.verify,
                        timeout=timeout_s,
                    )
                )
        except requests.exceptions.SSLError as err:
            raise DexLoginError(
                f"logging in at {host}: its TLS certificate is not trusted ({err}); set KFP_SSL_CA_CERT to the "
                "CA bundle that signed it"
            ) from None
        except requests.RequestException as err:
            raise DexLoginError(
                f"logging in at {host}: {type(err).__name__}: {err}; check KFP_HOST",
                transient=isinstance(err, requests.ConnectionError | requests.Timeout),
            ) from None
        if response.status_code != 200:
            raise DexLoginError(
                f"logging in at {host}: HTTP {response.status_code} at {_no_query(response.url)} after the login"
            )
        cookies = {c.name: c.value for c in session.cookies if c.value}
    if not cookies:
        raise DexLoginError(f"logging in at {host}: the login ended without a session cookie")
    if SESSION_COOKIE not in cookies:
        logger.warning("the login at %s set %s, not %s", host, sorted(cookies), SESSION_COOKIE)
    logger.info("logged in to %s as %s through Dex (connector %s)", host, login.username, login.connector)
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def _login_form_url(url: str, connector: str) -> str:
    """Dex's connector list (`.../auth`) -> that connector's `.../auth/<connector>`; a login form stays."""
    parts = urllib.parse.urlsplit(url)
    if re.search(r"/auth$", parts.path):
        return parts._replace(path=f"{parts.path}/{connector}").geturl()
    return url


def _no_query(url: str) -> str:
    """A URL for messages: without its query (states, codes)."""
    return urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()
