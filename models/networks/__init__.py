"""Network definitions: the bundled demo detector and MONAI's 3D RetinaNet for site models."""
