"""Step-up authentication (RFC 9470): some actions need a stronger or fresher sign-in.

The policy looks only at the token: its `acr` (authentication context class), `amr`
(authentication methods) and `auth_time` claims, which the identity provider sets when the user
signs in. The strength requirement is met when the token's `acr` is one of the accepted values OR
its `amr` holds one of the accepted methods (identity providers differ in which one they emit);
a maximum age is met when `auth_time` is recent enough. Tokens holding `users:any` act for a
service, not a signed-in user, and are never asked to step up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from keyvault.config import Settings
from keyvault.errors import InsufficientUserAuthentication

ANY_USER_SCOPE: Final = "users:any"


@dataclass(frozen=True, slots=True)
class StepUpPolicy:
    actions: frozenset[str] = frozenset()
    acr: tuple[str, ...] = ()
    amr: frozenset[str] = frozenset()
    max_age: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> StepUpPolicy:
        return cls(
            actions=frozenset(settings.stepup_actions),
            acr=settings.stepup_acr,
            amr=frozenset(settings.stepup_amr),
            max_age=settings.stepup_max_age,
        )

    def check(
        self,
        action: str,
        *,
        scopes: frozenset[str],
        acr: str | None,
        amr: frozenset[str],
        auth_time: int | None,
        now: float,
    ) -> None:
        """Raise InsufficientUserAuthentication when this token may not take `action` as it is."""
        if action not in self.actions or ANY_USER_SCOPE in scopes:
            return
        strong = not (self.acr or self.amr) or (acr in self.acr) or bool(amr & self.amr)
        fresh = self.max_age is None or (auth_time is not None and now - auth_time <= self.max_age)
        if strong and fresh:
            return
        detail = (
            "This action needs a stronger sign-in (for example multi-factor authentication)."
            if not strong
            else "This action needs a more recent sign-in; authenticate again."
        )
        raise InsufficientUserAuthentication(
            detail,
            acr_values=" ".join(self.acr) or None,
            max_age=None if fresh else self.max_age,
        )
