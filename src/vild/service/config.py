"""The service's limits and sizes: one frozen dataclass, given to `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of `vild serve`. Every limit is enforced with a clear 4xx answer.

    max_upload_bytes:   size of one encoded image (the decoded bytes of a base64 image, or a
                        multipart file); the whole request body may be at most
                        `max_body_bytes` (a base64 image is 4/3 larger than its bytes).
    max_pixels:         width x height of an uploaded image, checked from its header before
                        any pixel is decoded.
    max_vocabulary:     names in one vocabulary (and, separately, attributes in one request).
    max_labels:         names x attributes in one request (every pair is a label scored
                        for every region: 2,000 x 2,000 would be 4 million).
    max_name_length:    characters in one name or attribute (a name must also fit the text
                        encoder's context, else 422 `name_too_long` too).
    max_exemplars:      example images (exemplars) in one request (each is two crops through
                        the teacher's image tower).
    max_detections:     the most detections one request may ask for.
    request_timeout_s:  a request that waits longer than this (for its body, for the model,
                        or in the model's queue) is answered 408; the model's work already
                        started is finished and thrown away.
    max_pending:        requests waiting for the model at once; more are answered 503.
    cache_size:         image embeddings kept for `/v1/images/{id}/query` (least recently
                        used first out).
    cache_bytes:        and at most this many bytes of tensors in that cache.
    max_mask_bytes:     masks come back at image resolution (N x H x W floats): a request's
                        max_detections is lowered so that they fit in this many bytes (the
                        response says so in `notes`).
    decode_workers:     images decoded at once (threads beside the model's).
    """

    max_upload_bytes: int = 10 * MiB
    max_pixels: int = 4096 * 4096
    max_vocabulary: int = 2000
    max_labels: int = 20_000
    max_name_length: int = 100
    max_exemplars: int = 16
    max_detections: int = 1000
    request_timeout_s: float = 60.0
    max_pending: int = 16
    cache_size: int = 32
    cache_bytes: int = 1024 * MiB
    max_mask_bytes: int = 128 * MiB
    decode_workers: int = 2

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_vocabulary", "max_labels", "max_name_length",
                     "max_exemplars", "max_detections", "max_pending", "cache_size", "cache_bytes",
                     "max_mask_bytes", "decode_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: a base64 image of `max_upload_bytes` plus 1 MiB of fields."""
        return (self.max_upload_bytes * 4) // 3 + 4 + MiB
