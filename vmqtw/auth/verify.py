"""Does a plugin object really implement the interfaces it declares?

``@implementer(IAuthOnPublish)`` is a promise the broker relies on: the chain
calls ``plugin.auth_on_publish(client, topic, payload, qos, retain)`` for
every PUBLISH.  A missing method, or one whose signature does not take those
arguments, would fail every request at run time; ``interface_problems`` finds
it at load time, so the loader can refuse to start (and ``--check`` can say
so) instead.

The check is ``zope.interface.verify.verifyObject`` for every interface the
object provides (and, through it, the interfaces they extend), plus a call
check the verifier does not make: the hook must be callable with the
positional arguments the broker passes (a required keyword-only argument
fails that).  Each problem is one line naming the interface, the method as
the interface declares it, the implementation with its signature and source
``FILE:LINE``, and what is wrong.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from zope.interface import providedBy
from zope.interface.exceptions import BrokenImplementation, BrokenMethodImplementation, Invalid
from zope.interface.interface import InterfaceClass, Method
from zope.interface.verify import verifyObject

__all__ = ["interface_problems", "describe_object"]

#: verifyObject's wording -> what it means for a hook the broker calls.
_REASONS = {
    "implementation requires too many arguments":
        "requires more arguments than the broker passes",
    "implementation doesn't allow enough arguments":
        "accepts fewer arguments than the broker passes",
}


def describe_object(obj: Any) -> str:
    """``module.Class`` of a plugin object (or its repr for a module or class)."""
    cls = type(obj)
    if isinstance(obj, type) or inspect.ismodule(obj):
        return repr(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _iface_name(iface: InterfaceClass) -> str:
    if iface.__module__ == "vmqtw.auth.api":
        return iface.__name__
    return f"{iface.__module__}.{iface.__name__}"


def _declared(iface: InterfaceClass, desc: Any) -> str:
    """``IAuthOnPublish.auth_on_publish(client, topic, payload, qos, retain)``."""
    owner = getattr(desc, "interface", None) or iface
    name = _name(desc)
    signature = desc.getSignatureString() if isinstance(desc, Method) else ""
    return f"{_iface_name(owner)}.{name}{signature}"


def _source(attr: Any) -> str:
    """`` (FILE:LINE)`` where a method is defined, or ``""``."""
    func = inspect.unwrap(getattr(attr, "__func__", attr))
    code = getattr(func, "__code__", None)
    if code is None:
        return ""
    return f" ({os.path.normpath(code.co_filename)}:{code.co_firstlineno})"


def _implementation(attr: Any, name: str) -> str:
    """``name(client, topic) (FILE:LINE)``: the implementation as Python sees it
    when the broker calls it (a bound method: without ``self``)."""
    try:
        signature = str(inspect.signature(attr))
    except (TypeError, ValueError):
        signature = "(...)"
    return f"{name}{signature}{_source(attr)}"


def _self_missing(attr: Any, desc: Any) -> bool:
    """A method written without ``self``: its first parameter is the hook's first."""
    func = getattr(attr, "__func__", None)
    if func is None or not isinstance(desc, Method) or not desc.positional:
        return False
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == desc.positional[0]


def _name(desc: Any) -> str:
    """The name of a ``Method``/``Attribute`` description (or the name itself)."""
    return getattr(desc, "__name__", str(desc))


def _one(iface: InterfaceClass, plugin: Any, error: Invalid) -> str:
    """One verifyObject error as a readable line."""
    if isinstance(error, BrokenImplementation):
        desc = error.name
        name = _name(desc)
        what = "method" if isinstance(desc, Method) else "attribute"
        return f"{_declared(iface, desc)}: the plugin has no {what} {name}"
    if isinstance(error, BrokenMethodImplementation):
        desc = error.method
        name = _name(desc)
        attr = getattr(plugin, name, None)
        if not callable(attr):
            value = "None" if attr is None else f"a {type(attr).__name__} ({attr!r:.40})"
            return f"{_declared(iface, desc)}: the plugin's {name} is {value}, not a method"
        reason = _REASONS.get(error.mess, error.mess.replace("implementation", "it"))
        hint = " (is 'self' missing?)" if _self_missing(attr, desc) else ""
        return f"{_declared(iface, desc)}: {_implementation(attr, name)} {reason}{hint}"
    return f"{_iface_name(iface)}: {error}"


def _call_problems(iface: InterfaceClass, plugin: Any, reported: set[str]) -> list[str]:
    """Hooks verifyObject accepts that still cannot be called the way the broker
    calls them (positional arguments only), e.g. a required keyword-only argument.
    ``reported``: the names verifyObject already found wrong."""
    problems = []
    for name, desc in iface.namesAndDescriptions(all=True):
        if not isinstance(desc, Method) or name in reported:
            continue
        attr = getattr(plugin, name, None)
        try:
            signature = inspect.signature(attr)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue  # not introspectable: verifyObject gave it a pass too
        try:
            signature.bind(*desc.positional)
        except TypeError as e:
            problems.append(f"{_declared(iface, desc)}: {_implementation(attr, name)} cannot "
                            f"be called with the broker's arguments ({e})")
    return problems


def interface_problems(plugin: Any) -> list[str]:
    """Every way ``plugin`` fails the interfaces it provides, one line each
    (an empty list when it implements them all)."""
    problems: list[str] = []
    for iface in providedBy(plugin):
        errors: list[Invalid] = []
        try:
            verifyObject(iface, plugin)
        except Invalid as e:
            # several problems come as one MultipleInvalid holding them
            errors = list(getattr(e, "exceptions", None) or [e])
        problems += [_one(iface, plugin, error) for error in errors]
        reported = {_name(getattr(error, "name", None) or getattr(error, "method", None))
                    for error in errors}
        problems += _call_problems(iface, plugin, reported)
    return problems
