"""A face detector stand-in for tests that script what each detection call finds."""


class FakeDetector:
    """Returns prepared faces per call, in order."""

    def __init__(self, faces_per_frame):
        self.faces_per_frame = list(faces_per_frame)
        self.calls = 0

    def detect(self, image):
        faces = self.faces_per_frame[self.calls]
        self.calls += 1
        return faces
