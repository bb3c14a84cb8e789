"""Image backbone: Hiera trunk, FPN neck and the ImageEncoder that joins them."""
