"""Image folders -> decode once -> stratified splits -> a `tf.data` pipeline.

`ImageFolder` scans a folder with one subfolder per class (or already split
into `train/`, `val/` or `validation/`, `test/`), decodes every image once with
OpenCV into RGB uint8 at `image_size`, caches the result on disk as a `.npy`
array keyed by the files' names, sizes and modification times, and splits it
stratified with scikit-learn. Every trial of a search, and every later run on
the same folder, reads the cache instead of decoding again. Bad files
(unreadable, truncated, empty, not images, too small, too large, hidden) never
stop a load: they are listed in `data.skipped` with the reason and summarised
in one warning; the codecs' own stderr lines are suppressed.

What lives where (data flows down this list):

- `header`: format, width and height from an image's first bytes, truncation
  checks; no decoding (the pixel budget is enforced from here).
- `quiet`: `quiet_codecs()`, keeps libjpeg/libpng/OpenCV lines off stderr.
- `decode`: `decode_image`, `load_image`, `resize_image`, `ImageError`,
  `MAX_PIXELS`, `IMAGE_EXTENSIONS`, `RESIZE_MODES`.
- `scan`: walking a folder (class folders, pre-split layouts, hidden files)
  or a manifest into a plan of files to decode.
- `store`: the decode-once cache (keys, parallel decode into rows, atomic
  writes, `default_cache_dir`) and the row readers batches come from.
- `splits`: `check_split_fractions`, stratified splits, `SPLITS`, `DEFAULT_SPLIT`.
- `images`: `ImageData`, the split images every trial shares (`tf.data`,
  arrays, K-fold views, manifests).
- `folder`: `ImageFolder`, an `ImageData` loaded from a folder;
  `SplitIgnoredWarning` (a `split` a pre-split folder does not use).
- `datasets`: `digits()`, a dataset bundled with scikit-learn, and
  `named_dataset`, what the CLI's DATA_DIR names load.
- `fashion`: `fashion_mnist()`, the real Fashion-MNIST from its idx files
  (`read_idx`; Debian's package, a folder, Keras' cache or a Keras download).
  Both datasets are also `resnet_tuner.datasets`.

Example:
    >>> from resnet_tuner.data import ImageFolder
    >>> data = ImageFolder("pets/", image_size=(128, 128), max_pixels=50_000_000)
    >>> data.skipped[:1]
    [('/home/me/pets/cat/huge.png', 'too large (30000x30000 px; max_pixels=50000000)')]
"""

# OpenCV is not a declared dependency (pyproject.toml: any of its four wheels
# provides cv2, and two of them overwrite each other), so say what to install
# instead of failing deep inside. 4.11 added cv2.IMREAD_COLOR_RGB (data.decode).
try:
    import cv2
except ImportError as err:
    raise ImportError(
        f"resnet_tuner needs OpenCV 4.11 or newer, and `import cv2` failed ({err}). "
        'Install it with: pip install "resnet-tuner[opencv]" (adds opencv-python-headless), '
        "or keep the OpenCV wheel you already use (opencv-python, opencv-contrib-python, ...)."
    ) from err
if not hasattr(cv2, "IMREAD_COLOR_RGB"):
    raise ImportError(
        f"resnet_tuner needs OpenCV 4.11 or newer; cv2 {cv2.__version__} is installed "
        f"({cv2.__file__}). Upgrade the OpenCV wheel you have, e.g. "
        "pip install -U opencv-python-headless."
    )

from resnet_tuner.data.decode import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    RESIZE_MODES,
    ImageError,
    decode_image,
    load_image,
    resize_image,
)
from resnet_tuner.data.folder import ImageFolder, SplitIgnoredWarning
from resnet_tuner.data.header import image_dimensions, image_format
from resnet_tuner.data.images import MANIFEST_VERSION, ImageData
from resnet_tuner.data.quiet import quiet_codecs
from resnet_tuner.data.scan import VAL_DIR_NAMES
from resnet_tuner.data.splits import DEFAULT_SPLIT, SPLITS, check_split_fractions
from resnet_tuner.data.store import CACHE_VERSION, IN_MEMORY_BYTES, default_cache_dir

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_SPLIT",
    "IMAGE_EXTENSIONS",
    "IN_MEMORY_BYTES",
    "MANIFEST_VERSION",
    "MAX_PIXELS",
    "RESIZE_MODES",
    "SPLITS",
    "SplitIgnoredWarning",
    "VAL_DIR_NAMES",
    "ImageData",
    "ImageError",
    "ImageFolder",
    "check_split_fractions",
    "decode_image",
    "default_cache_dir",
    "image_dimensions",
    "image_format",
    "load_image",
    "quiet_codecs",
    "resize_image",
]
