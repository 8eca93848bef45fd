"""Who is calling and what they may do: bearer JWT → Principal, and the access check of a route.

Algorithms come from configuration, never from the token: HS256 with the shared secret for tokens
without a `kid`, the configured asymmetric algorithms for tokens whose `kid` names a key in the
identity provider's JWKS. A token that names an algorithm outside that set is refused by PyJWT.

Only access tokens get in. The provider signs its ID tokens with the same keys, and an ID token
minted for keyvault's client carries keyvault's audience, so a key-set token must declare itself
an access token in its `typ` header (RFC 9068 `at+jwt`, or KEYVAULT_JWKS_TOKEN_TYPES). The shared
secret signs only what `keyvault token` mints, never an ID token, so HS256 tokens without a `typ`
or with the generic `JWT` are taken too: deployments hold such tokens from older versions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import jwt

from keyvault.auth.jwks import JwksCache
from keyvault.auth.stepup import StepUpPolicy
from keyvault.auth.token_cache import VerifiedTokenCache
from keyvault.config import Settings, media_type
from keyvault.errors import Forbidden, Unauthorized

HS_ALGORITHM: Final = "HS256"
ACCESS_TOKEN_TYPE: Final = "at+jwt"
# What HS256 tokens may say they are: keyvault's own, minted with or without RFC 9068's type.
HS_TOKEN_TYPES: Final = frozenset({ACCESS_TOKEN_TYPE, "jwt"})
_SOMEONE_ELSES: Final = "The bearer token was issued by or for someone else."


class Scope(StrEnum):
    read = "api-key:read"
    write = "api-key:write"
    delete = "api-key:delete"
    use = "api-key:use"  # calls through the provider proxy; never the plaintext
    any_user = "users:any"
    audit_read = "audit:read"


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    scopes: frozenset[str]
    client_id: str | None
    # How and when the user signed in (OIDC / RFC 9470), for step-up checks.
    acr: str | None = None
    amr: frozenset[str] = frozenset()
    auth_time: int | None = None


class TokenVerifier:
    def __init__(self, settings: Settings, jwks: JwksCache | None = None) -> None:
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_seconds
        self._jwks_algorithms = list(settings.jwks_algorithms)
        self._jwks_token_types = frozenset(settings.jwks_token_types)
        self._jwks = jwks
        self._verified: VerifiedTokenCache[Principal] = VerifiedTokenCache()

    async def verify(self, token: str) -> Principal:
        # Callers reuse a token for many requests; one that already passed every check below is
        # taken as verified until its own expiry (see token_cache for the exact rules).
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is malformed.", reason="malformed") from None
        kid = header.get("kid")
        typ = header.get("typ")
        if kid is not None and self._jwks is not None:
            # Before the key lookup: a token of the wrong type never costs a key-set refetch.
            _require_type(typ, self._jwks_token_types, optional=False)
            key: Any = await self._jwks.key_for(str(kid))
            algorithms = self._jwks_algorithms
        elif self._secret is not None:
            _require_type(typ, HS_TOKEN_TYPES, optional=True)
            key, algorithms = self._secret, [HS_ALGORITHM]
        else:
            raise Unauthorized(
                "The bearer token names no key this service trusts.", reason="unknown_key"
            )
        return self._decode(token, key, algorithms)

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The bearer token has expired.", reason="expired") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthorized(
                f"The bearer token lacks the '{error.claim}' claim.", reason="missing_claim"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(_SOMEONE_ELSES, reason="wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(_SOMEONE_ELSES, reason="wrong_issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("The bearer token is invalid.", reason="bad_signature") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("The bearer token is invalid.", reason="wrong_algorithm") from None
        except jwt.DecodeError:
            raise Unauthorized("The bearer token is invalid.", reason="malformed") from None
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is invalid.") from None
        principal = _principal_from(claims)
        self._verified.put(token, principal, expires_at=float(claims["exp"]) + self._leeway)
        return principal


def _require_type(typ: object, accepted: frozenset[str], *, optional: bool) -> None:
    if typ is None and optional:
        return
    if not isinstance(typ, str) or media_type(typ) not in accepted:
        raise Unauthorized("The bearer token is not an access token.", reason="wrong_type")


def _principal_from(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("The bearer token's subject is not a string.", reason="bad_subject")
    scope = claims.get("scope", "")
    scopes = scope.split() if isinstance(scope, str) else []
    client_id = claims.get("client_id") or claims.get("azp")
    acr = claims.get("acr")
    amr = claims.get("amr")
    auth_time = claims.get("auth_time")
    return Principal(
        sub,
        frozenset(scopes),
        str(client_id) if client_id else None,
        acr=acr if isinstance(acr, str) else None,
        amr=frozenset(m for m in amr if isinstance(m, str))
        if isinstance(amr, list)
        else frozenset(),
        # bool is an int in Python; `true` is no time, and neither is Infinity or NaN.
        auth_time=int(auth_time)
        if isinstance(auth_time, int | float)
        and not isinstance(auth_time, bool)
        and math.isfinite(auth_time)
        else None,
    )


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer …` header, read exactly as HTTPBearer reads it."""
    scheme, _, credentials = (authorization or "").partition(" ")
    credentials = credentials.strip()
    if not (scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


def is_service(principal: Principal) -> bool:
    """A service token (`users:any`): one `sub` shared by every replica of the service."""
    return Scope.any_user in principal.scopes


@dataclass(frozen=True, slots=True)
class Access:
    """What a route asks of its caller: one of `scopes` for the path's sub (plus `users:any` for
    someone else's), and the step-up policy of the `step_up` action ("read", "write", "delete",
    "use")."""

    scopes: tuple[Scope, ...]
    step_up: str | None = None


READ_ACCESS: Final = Access((Scope.read,), step_up="read")
WRITE_ACCESS: Final = Access((Scope.write,), step_up="write")
DELETE_ACCESS: Final = Access((Scope.delete,), step_up="delete")
# Calling the provider with the key (keyvault.proxy): `api-key:read` does not imply it.
USE_ACCESS: Final = Access((Scope.use,), step_up="use")
# Seeing whether a key exists, or who used it, takes any of the key scopes.
ANY_KEY_ACCESS: Final = Access((Scope.read, Scope.write, Scope.delete, Scope.use))


def check_access(
    caller: Principal, sub: str, access: Access, policy: StepUpPolicy, now: float
) -> None:
    """Raise Forbidden (or InsufficientUserAuthentication) unless `caller` has `access` to `sub`.

    The decision uses the token alone, so it is the same whether or not the target has a key, and
    no query runs for a refused caller. It counts nothing: the web dependencies do.
    """
    if caller.scopes.isdisjoint(access.scopes):
        wanted = " or ".join(scope.value for scope in access.scopes)
        raise Forbidden(f"This action needs the {wanted} scope.", "forbidden_scope")
    if caller.sub != sub and Scope.any_user not in caller.scopes:
        raise Forbidden("Acting on another user's key needs the users:any scope.", "forbidden_user")
    if access.step_up is not None:
        policy.check(
            access.step_up,
            scopes=caller.scopes,
            acr=caller.acr,
            amr=caller.amr,
            auth_time=caller.auth_time,
            now=now,
        )


def mint_token(settings: Settings, sub: str, scopes: str, ttl_seconds: int) -> str:
    """An HS256 access token (`typ: at+jwt`) for development and tests, signed with the secret."""
    if settings.jwt_secret is None:
        raise ValueError("KEYVAULT_JWT_SECRET is not set")
    now = int(time.time())
    claims = {
        "sub": sub,
        "scope": scopes,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(
        claims,
        settings.jwt_secret.get_secret_value(),
        algorithm=HS_ALGORITHM,
        headers={"typ": ACCESS_TOKEN_TYPE},
    )
