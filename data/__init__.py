"""Lightning data modules for the zoo (images: `data.images.ImageDataModule`)."""
