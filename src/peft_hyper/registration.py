"""Make "HYPERLORA" a PEFT type. PEFT has no plugin discovery, so importing `peft_hyper` must run this first."""

from __future__ import annotations

from peft.utils.peft_types import PeftType


def _add_peft_type_member(name: str) -> PeftType:
    """Add `name` to PEFT's `PeftType` enum (idempotent) and return the member.

    `peft.utils.register_peft_method` only accepts names that are already `PeftType` members, and Python enums cannot
    be extended through their public API, so the member is added the way `EnumType` adds its own.
    """
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


PEFT_TYPE_HYPERLORA = _add_peft_type_member("HYPERLORA")
