"""On-graph batch augmentation for the tf.data pipeline (never inside the exported model).

Presets ``none | light | medium | heavy`` combine flip, random resized crop, rotation, zoom and colour
jitter; ``randaugment`` adds Keras' RandAugment; ``mixup``/``cutmix`` mix pairs of images and their
one-hot labels (soft labels). Images stay float32 RGB in ``0..255``. All randomness comes from seeded
ops, so a pipeline with the same ``--seed`` yields the same batches.

Example:
    >>> aug = Augmenter("medium", seed=1)
    >>> images, labels = aug(images, onehot_labels)
"""

from __future__ import annotations

from dataclasses import dataclass

PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": {"flip": 1, "crop_scale": 0.6},
    "medium": {"flip": 1, "crop_scale": 0.35, "rotate": 0.05, "jitter": 0.2},
    "heavy": {"flip": 1, "crop_scale": 0.2, "rotate": 0.1, "zoom": 0.2, "jitter": 0.4},
}


@dataclass
class Augmenter:
    """Batch augmentation callable: ``(images[B,H,W,3] 0..255, onehot[B,C]) -> same``."""

    preset: str = "light"
    randaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown --augment {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("--mixup and --cutmix take a Beta alpha >= 0")
        import keras

        p = PRESETS[self.preset]
        self._p = p
        self._rotate = keras.layers.RandomRotation(p["rotate"], fill_mode="reflect", seed=self.seed) \
            if p.get("rotate") else None
        self._zoom = keras.layers.RandomZoom(p["zoom"], fill_mode="reflect", seed=self.seed + 1) \
            if p.get("zoom") else None
        self._randaug = keras.layers.RandAugment(value_range=(0, 255), seed=self.seed + 2) \
            if self.randaugment else None

    @property
    def active(self) -> bool:
        return bool(self._p) or self.randaugment or self.mixup > 0 or self.cutmix > 0

    def _random_resized_crop(self, images):
        import tensorflow as tf

        b = tf.shape(images)[0]
        h, w = images.shape[1], images.shape[2]
        scale = tf.random.uniform([b], self._p["crop_scale"], 1.0, seed=self.seed + 3)
        log_ratio = tf.random.uniform([b], tf.math.log(3 / 4), tf.math.log(4 / 3), seed=self.seed + 4)
        ratio = tf.exp(log_ratio)
        ch = tf.minimum(tf.sqrt(scale / ratio), 1.0)  # crop height/width as fractions
        cw = tf.minimum(tf.sqrt(scale * ratio), 1.0)
        y0 = tf.random.uniform([b], seed=self.seed + 5) * (1.0 - ch)
        x0 = tf.random.uniform([b], seed=self.seed + 6) * (1.0 - cw)
        boxes = tf.stack([y0, x0, y0 + ch, x0 + cw], axis=1)
        return tf.image.crop_and_resize(images, boxes, tf.range(b), (h, w), method="bilinear")

    def _jitter(self, images):
        import tensorflow as tf

        s = self._p["jitter"]
        b = tf.shape(images)[0]
        bright = tf.random.uniform([b, 1, 1, 1], -s, s, seed=self.seed + 7) * 255.0
        contrast = tf.random.uniform([b, 1, 1, 1], 1 - s, 1 + s, seed=self.seed + 8)
        sat = tf.random.uniform([b, 1, 1, 1], 1 - s, 1 + s, seed=self.seed + 9)
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        x = (images - mean) * contrast + mean + bright
        grey = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = (x - grey) * sat + grey
        return tf.clip_by_value(x, 0.0, 255.0)

    def _mix(self, images, labels):
        import tensorflow as tf

        b = tf.shape(images)[0]
        perm = tf.random.shuffle(tf.range(b), seed=self.seed + 10)
        def beta(a):
            g1 = tf.random.gamma([], a, seed=self.seed + 12)
            g2 = tf.random.gamma([], a, seed=self.seed + 13)
            return g1 / (g1 + g2)

        def mixup():
            lam = beta(self.mixup)
            return lam * images + (1 - lam) * tf.gather(images, perm), lam

        def cutmix():
            lam = beta(self.cutmix)
            h, w = tf.shape(images)[1], tf.shape(images)[2]
            cut = tf.sqrt(1.0 - lam)
            ch = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
            cw = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
            cy = tf.random.uniform([], 0, h, dtype=tf.int32, seed=self.seed + 14)
            cx = tf.random.uniform([], 0, w, dtype=tf.int32, seed=self.seed + 15)
            y0, y1 = tf.maximum(cy - ch // 2, 0), tf.minimum(cy + ch // 2, h)
            x0, x1 = tf.maximum(cx - cw // 2, 0), tf.minimum(cx + cw // 2, w)
            yy = tf.range(h)[:, None]
            xx = tf.range(w)[None, :]
            box = tf.cast((yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1), images.dtype)[None, :, :, None]
            mixed = images * (1 - box) + tf.gather(images, perm) * box
            area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
            return mixed, 1.0 - area

        if self.mixup > 0 and self.cutmix > 0:
            mixed, lam = tf.cond(tf.random.uniform([], seed=self.seed + 11) < 0.5, cutmix, mixup)
        elif self.cutmix > 0:
            mixed, lam = cutmix()
        else:
            mixed, lam = mixup()
        return mixed, lam * labels + (1 - lam) * tf.gather(labels, perm)

    def __call__(self, images, labels):
        import tensorflow as tf

        p = self._p
        if p.get("flip"):
            images = tf.image.random_flip_left_right(images, seed=self.seed + 16)
        if p.get("crop_scale"):
            images = self._random_resized_crop(images)
        if self._rotate is not None:
            images = self._rotate(images, training=True)
        if self._zoom is not None:
            images = self._zoom(images, training=True)
        if p.get("jitter"):
            images = self._jitter(images)
        if self._randaug is not None:
            images = tf.cast(self._randaug(images, training=True), tf.float32)
        if self.mixup > 0 or self.cutmix > 0:
            images, labels = self._mix(images, labels)
        return images, labels
