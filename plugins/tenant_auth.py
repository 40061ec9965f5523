"""tenant_auth: an example vmqtw auth plugin, written as a user would write one.

What it does:

* **Login (auth_on_register).**  Users are listed in a small JSON file with a
  password and a tenant.  A right password moves the client into its tenant's
  mountpoint (``ok(mountpoint=...)``), so tenants never see each other's
  topics, sessions or retained messages.  A wrong password is refused with
  ``error("invalid_credentials")`` (CONNACK 4 / 0x86).  A user that is not in
  the file gets ``NEXT``: the next plugin in the chain (e.g. vmq_passwd) decides.

* **An admin-topic guard (auth_on_publish / auth_on_subscribe).**  Only the
  admin user may publish to ``admin`` or ``admin/...``, or subscribe to a
  filter that could match such topics (``admin/#``, ``+/x``, ``#``).  Everyone
  else gets ``error("not_authorized")``, which ends the chain: no later
  plugin (vmq_acl) can grant it.  Every other request gets ``NEXT``, so
  vmq_acl (or another authorization plugin after this one) makes the real
  decision; with ``tenant_auth.allow_other_topics = on`` they get ``OK``
  instead, for brokers that run this plugin without vmq_acl.

* **Notifications (on_register, on_client_offline, on_client_gone).**  It
  keeps the set of online clients per mountpoint and logs each change.

broker.conf::

    plugins.tenant_auth = on
    plugins.tenant_auth.path = /opt/vmqtw/plugins    # the directory holding this file
    plugins.tenant_auth.priority = 10                # before vmq_passwd and vmq_acl
    tenant_auth.users_file = tenants.json            # relative to broker.conf's directory
    tenant_auth.admin_user = admin                   # default: admin
    tenant_auth.protected = admin                    # default: admin (a first topic level)
    tenant_auth.allow_other_topics = off             # default: off (let vmq_acl decide)

tenants.json::

    {
      "alice": {"password": "secret1", "tenant": "tenant-a"},
      "bob":   {"password": "secret2", "tenant": "tenant-b"},
      "admin": {"password": "change-me", "tenant": ""}
    }

An empty tenant means the mountpoint of the listener the client came in on.
The file is read at startup (any problem stops startup with a message naming
the ``plugins.tenant_auth`` line of broker.conf) and again on SIGHUP
(``reload``); a broken file at reload time is logged and the previous users
stay in force.  The admin user's own access to the protected topics is
decided like any other request (NEXT, or OK with allow_other_topics).

This is an example: the passwords are stored in plain text.  For real
deployments store hashes (see ``vmqtw.auth.passwd``) or ask a user service.
"""
from __future__ import annotations

import hmac
import json
import os
from typing import Any, Mapping

from zope.interface import implementer

from vmqtw.auth.api import (
    NEXT, OK, IAuthOnPublish, IAuthOnRegister, IAuthOnSubscribe, IOnClientGone,
    IOnClientOffline, IOnRegister, error, ok,
)

SETTINGS = ("users_file", "admin_user", "protected", "allow_other_topics")
_BOOLS = {"on": True, "true": True, "off": False, "false": False}


class User:
    __slots__ = ("name", "password", "tenant")

    def __init__(self, name: str, password: bytes, tenant: str) -> None:
        self.name = name
        self.password = password
        self.tenant = tenant


def read_users(path: str) -> dict[str, User]:
    """Parse the users file; ValueError names the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the users file: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of users")
    users = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("password"), str) \
                or not isinstance(entry.get("tenant", ""), str):
            raise ValueError(f"{path}: user {name!r}: expected "
                             f'{{"password": "...", "tenant": "..."}}')
        tenant = entry.get("tenant", "").rstrip("/")
        if "+" in tenant or "#" in tenant:
            raise ValueError(f"{path}: user {name!r}: a tenant cannot contain '+' or '#'")
        users[name] = User(name, entry["password"].encode("utf-8"), tenant)
    return users


@implementer(IAuthOnRegister, IAuthOnPublish, IAuthOnSubscribe,
             IOnRegister, IOnClientOffline, IOnClientGone)
class TenantAuth:

    def __init__(self, path: str, admin_user: str, protected: str,
                 allow_other_topics: bool, log: Any) -> None:
        self.path = path
        self.admin_user = admin_user
        self.protected = protected
        self.allow_other_topics = allow_other_topics
        self.log = log
        self.users = read_users(path)  # a ValueError here stops startup
        #: The client ids of the online clients, by mountpoint.
        self.online: dict[str, set[str]] = {}

    # -- SIGHUP ---------------------------------------------------------------

    def reload(self) -> None:
        try:
            self.users = read_users(self.path)
        except ValueError as e:
            self.log.error("{reason}; keeping the previous users", reason=str(e))
            return
        self.log.info("{path}: {n} users loaded", path=self.path, n=len(self.users))

    # -- CONNECT --------------------------------------------------------------

    def auth_on_register(self, request):
        user = self.users.get(request.username) if request.username is not None else None
        if user is None:
            return NEXT  # not ours: let the next plugin decide
        if request.password is None or not hmac.compare_digest(request.password, user.password):
            return error("invalid_credentials")
        if not user.tenant:
            return OK
        return ok(mountpoint=user.tenant)

    # -- PUBLISH / SUBSCRIBE ----------------------------------------------------

    def _other(self):
        return OK if self.allow_other_topics else NEXT

    def auth_on_publish(self, client, topic, payload, qos, retain):
        first = topic.split("/", 1)[0]
        if first == self.protected and client.username != self.admin_user:
            return error("not_authorized")
        return self._other()

    def auth_on_subscribe(self, client, topics):
        if client.username != self.admin_user:
            for topic_filter, _qos in topics:
                if topic_filter.startswith("$share/"):
                    topic_filter = topic_filter.split("/", 2)[-1]
                first = topic_filter.split("/", 1)[0]
                # "+" and "#" at the first level would match admin topics too.
                if first in (self.protected, "+", "#"):
                    return error("not_authorized")
        return self._other()

    # -- notifications (return values are ignored) ------------------------------

    def on_register(self, client):
        clients = self.online.setdefault(client.mountpoint, set())
        clients.add(client.client_id)
        self.log.info("{client_id} online in {mountpoint!r} ({n} online there)",
                      client_id=client.client_id, mountpoint=client.mountpoint, n=len(clients))

    def _gone(self, mountpoint, client_id):
        clients = self.online.get(mountpoint)
        if clients is not None:
            clients.discard(client_id)
            if not clients:
                del self.online[mountpoint]

    def on_client_offline(self, mountpoint, client_id):
        self._gone(mountpoint, client_id)

    def on_client_gone(self, mountpoint, client_id):
        self._gone(mountpoint, client_id)


def make_plugin(settings: Mapping[str, str], context: Any) -> TenantAuth:
    """Called once at startup with this plugin's ``tenant_auth.*`` settings."""
    for key in settings:
        if key not in SETTINGS:
            raise ValueError(f"unknown setting tenant_auth.{key} "
                             f"(known: {', '.join(SETTINGS)})")
    path = settings.get("users_file", "").strip()
    if not path:
        raise ValueError("tenant_auth.users_file is not set")
    if not os.path.isabs(path):
        path = os.path.join(context.config_dir, path)
    flag = settings.get("allow_other_topics", "off").strip().lower()
    if flag not in _BOOLS:
        raise ValueError(f"tenant_auth.allow_other_topics must be on or off, got {flag!r}")
    protected = settings.get("protected", "admin").strip()
    if not protected or "/" in protected or "+" in protected or "#" in protected:
        raise ValueError("tenant_auth.protected must be one topic level without wildcards")
    return TenantAuth(path, settings.get("admin_user", "admin").strip(), protected,
                      _BOOLS[flag], context.log)
