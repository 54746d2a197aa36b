"""Channel names: how an identity, a session and an outbox row say where a person is reached."""

from __future__ import annotations

CONSOLE = "console"  # `homevisit chat`: the user id is the staff number
API = "api"  # the generic JSON channel: the user id is the staff number
WECOM = "wecom"
DINGTALK = "dingtalk"
FEISHU = "feishu"  # the user id is the open_id the event carries (per app)
WECHAT = "wechat"  # the WeChat Official Account: the user id is the follower's OpenID
DINGTALK_GROUP = "dingtalk_group"  # the coordinators' DingTalk group robot (digests only)

# Channels whose user id is the staff number itself (no identity row needed).
STAFF_NO_CHANNELS = frozenset({CONSOLE, API})
# Not a channel: the de-duplication rows (user id "") of DingTalk HTTP mode's used signs.
DINGTALK_SIGNS = "dingtalk_sign"
