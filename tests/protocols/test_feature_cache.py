"""The SVM protocol's feature cache: which decoding its features came from."""

from tests.helpers import compose_cfg


def test_features_of_cropped_or_stain_normalised_images_never_reuse_plain_ones():
    """The feature cache's meta names the decoding when it is not the plain resize (a cropped run read
    the plain run's cached features before), and the stain target when there is one."""
    from types import SimpleNamespace

    from bench.protocols.cnn_features import decoding_meta

    plain = decoding_meta(compose_cfg(), SimpleNamespace(stain=None))
    assert plain == {}  # the caches of plain runs keep their keys
    cropped = decoding_meta(compose_cfg("data.geometry=resize_crop"), SimpleNamespace(stain=None))
    assert cropped == {"geometry": ["resize_crop", 0.875]}
    a = {"method": "reinhard", "target": {"means": [1, 2, 3], "stds": [1, 1, 1]}}
    b = {"method": "reinhard", "target": {"means": [1, 2, 4], "stds": [1, 1, 1]}}
    stained = [decoding_meta(compose_cfg(), SimpleNamespace(stain=s))["stain"] for s in (a, b)]
    assert stained[0] != stained[1]
