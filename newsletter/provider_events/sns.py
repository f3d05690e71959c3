"""Amazon SNS message signatures: the canonical string, the signing certificate, the subscription handshake.

SNS signs each message with SHA1withRSA (SignatureVersion 1) or SHA256withRSA (2) over "Name\\nvalue\\n"
for a fixed list of fields in a fixed order, and names the certificate in SigningCertURL. Anyone
can post a message naming any URL, so the certificate is fetched only over https from an SNS host
(sns.<region>.amazonaws.com, or .amazonaws.com.cn in China), never following a redirect: anything
else would let a forged message make us fetch an address of its choosing (SSRF) or trust its own key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from werkzeug.exceptions import ServiceUnavailable

from . import BadPayload, Refused, Unauthenticated

log = logging.getLogger(__name__)

# The fields signed, in the order signed; Subject only when the message has one.
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# Exactly SNS's own regional host (not, say, sns.s3.amazonaws.com: the S3 bucket called "sns"), as
# the AWS SDKs' message validators require; regions like us-east-1, us-gov-west-1, us-isob-east-1.
_SNS_HOST = re.compile(r"sns\.[a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d{1,2}\.amazonaws\.com(?:\.cn)?")
# What each URL field may point at on that host: the signing certificate, or SNS's API.
_SNS_PATH = {"SigningCertURL": re.compile(r"/SimpleNotificationService-[0-9a-f]{32}\.pem")}
_SNS_API_PATH = re.compile(r"/?")
# A certificate is a few KB; anything much larger is not one.
_MAX_DOWNLOAD = 64 * 1024
_CACHE_SIZE = 32
_CACHE_SECONDS = 24 * 3600

# Certificates by URL: (public key, monotonic time after which to fetch it again). A cache, so a
# per-process dict is fine: another process fetches its own copy.
CERTIFICATES: dict[str, tuple[rsa.RSAPublicKey, float]] = {}
_lock = threading.Lock()


class Unreachable(ServiceUnavailable):
    """Amazon SNS could not be reached from here: 503, so that SNS sends the message again later."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx then raises HTTPError: we go nowhere the message didn't name


_opener = urllib.request.build_opener(_NoRedirects)


def check_sns_url(url: Any, field: str) -> str:
    """`url` if it is https on an SNS host (default port, no credentials) at the path `field` has; Refused otherwise.

    SigningCertURL: /SimpleNotificationService-<32 hex>.pem; SubscribeURL and UnsubscribeURL: SNS's
    API at "/" with Action=ConfirmSubscription (or Unsubscribe).
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise BadPayload(f"The {field} is missing or not a URL.", field)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme != "https" or not parts.hostname or not _SNS_HOST.fullmatch(parts.hostname)
            or port not in (None, 443) or parts.username is not None or parts.password is not None
            or "\\" in url or any(ord(ch) < 33 for ch in url) or parts.fragment
            or not _sns_path_fits(field, parts.path, parts.query)):
        raise Refused(f"The {field} must be an https URL on an Amazon SNS host (sns.<region>.amazonaws.com); "
                      f"refused {url[:200]!r}.")
    return url


def _sns_path_fits(field: str, path: str, query: str) -> bool:
    pattern = _SNS_PATH.get(field)
    if pattern is not None:
        return pattern.fullmatch(path) is not None and not query
    action = "Unsubscribe" if field == "UnsubscribeURL" else "ConfirmSubscription"
    return _SNS_API_PATH.fullmatch(path) is not None and parse_qs(query).get("Action") == [action]


def fetch(url: str, timeout: float) -> bytes:
    """GET `url` (already checked) and return its body; OSError when it can't be had in `timeout` seconds."""
    with _opener.open(urllib.request.Request(url, headers={"User-Agent": "newsletter-sns/1"}),
                      timeout=timeout) as answer:
        body = answer.read(_MAX_DOWNLOAD + 1)
    if len(body) > _MAX_DOWNLOAD:
        raise OSError(f"{url} returned more than {_MAX_DOWNLOAD} bytes")
    return body


def signing_key(url: str, timeout: float) -> rsa.RSAPublicKey:
    """The RSA key of the certificate at `url` (an SNS URL), fetched once and cached."""
    now = time.monotonic()
    with _lock:
        cached = CERTIFICATES.get(url)
    if cached is not None and cached[1] > now:
        return cached[0]
    try:
        pem = fetch(url, timeout)
    except (OSError, urllib.error.URLError) as error:
        # Not the sender's fault, as far as we can tell: 503, which SNS retries.
        log.warning("could not fetch the SNS signing certificate %s: %s", url, error)
        raise Unreachable(f"The signing certificate at {url} could not be fetched, so the signature "
                          "can't be checked now; nothing was recorded.", retry_after=60) from None
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Unauthenticated(f"{url} is not a PEM certificate.") from None
    key = certificate.public_key()
    moment = datetime.now(timezone.utc)
    if not isinstance(key, rsa.RSAPublicKey):
        raise Unauthenticated("The signing certificate's key is not an RSA key.")
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise Unauthenticated("The signing certificate is expired or not yet valid.")
    keep_until = now + min(_CACHE_SECONDS, (certificate.not_valid_after_utc - moment).total_seconds())
    with _lock:
        if len(CERTIFICATES) >= _CACHE_SIZE:
            CERTIFICATES.clear()
        CERTIFICATES[url] = (key, keep_until)
    return key


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The canonical text SNS signs for this message."""
    lines = []
    for name in SIGNED_FIELDS[message["Type"]]:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise BadPayload(f"The SNS message has no {name} (text), which its signature covers.", name)
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8", "surrogatepass")


def verify(message: dict[str, Any], timeout: float) -> None:
    """Unauthenticated unless `message` carries a valid SNS signature; Refused for a certificate not on an SNS host."""
    kind = message.get("Type")
    if kind not in SIGNED_FIELDS:
        raise BadPayload(f"Unknown SNS message Type {str(kind)[:100]!r}: expected Notification, "
                         "SubscriptionConfirmation or UnsubscribeConfirmation.", "Type")
    version = message.get("SignatureVersion")
    if version not in HASHES:
        raise Unauthenticated(f"Unknown SNS SignatureVersion {str(version)[:20]!r}: only 1 and 2 can be checked.")
    url = check_sns_url(message.get("SigningCertURL"), "SigningCertURL")
    signature = message.get("Signature")
    try:
        raw_signature = base64.b64decode(signature, validate=True) if isinstance(signature, str) else b""
    except (binascii.Error, ValueError):
        raw_signature = b""
    if not raw_signature:
        raise Unauthenticated("The SNS message's Signature is missing or not base64.")
    data = string_to_sign(message)
    key = signing_key(url, timeout)
    try:
        key.verify(raw_signature, data, padding.PKCS1v15(), HASHES[version]())
    except InvalidSignature:
        raise Unauthenticated("The SNS message's signature does not match it: refused.") from None


def confirm_subscription(message: dict[str, Any], timeout: float) -> None:
    """Visit the SubscribeURL of a verified SubscriptionConfirmation, which confirms the subscription at SNS."""
    url = check_sns_url(message.get("SubscribeURL"), "SubscribeURL")
    try:
        fetch(url, timeout)
    except (OSError, urllib.error.URLError) as error:
        log.warning("could not confirm the SNS subscription to %s: %s", message.get("TopicArn"), error)
        raise Unreachable("Confirming the subscription at Amazon SNS failed; send the confirmation again.",
                          retry_after=60) from None
    log.info("confirmed the SNS subscription to %s", message.get("TopicArn"))
