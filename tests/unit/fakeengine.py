"""Stand-ins for the docker SDK's image collection, for tests of leases, dib layers and clean."""

import docker.errors


class FakeImage:
    def __init__(self, image_id, tags, created="", labels=None):
        self.id = image_id
        self.short_id = image_id[:19]
        self.tags = list(tags)
        self.labels = dict(labels or {})
        self.attrs = {"Created": created}


class FakeImages:
    """Enough of ``client.images`` for prune, clean and bake (by id or tag)."""

    def __init__(self, *images):
        self.images = {image.id: image for image in images}
        self.removed = []

    def _find(self, reference):
        for image in self.images.values():
            if reference == image.id or reference in image.tags:
                return image
        raise docker.errors.ImageNotFound(reference)

    def get(self, reference):
        return self._find(reference)

    def list(self, filters=None):
        wanted = (filters or {}).get("label", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted
        return [image for image in self.images.values()
                if all(_label_matches(image.labels, want) for want in wanted)]

    def remove(self, reference, force=False, noprune=False):
        image = self._find(reference)
        if reference in image.tags and len(image.tags) > 1:
            image.tags.remove(reference)  # untag only
            self.removed.append(reference)
            return
        del self.images[image.id]
        self.removed.append(reference)


def _label_matches(labels, want):
    key, _, value = want.partition("=")
    return key in labels and (not value or labels[key] == value)
