"""The data asset form of the studio's pages: a path (a URL or azureml:// reference), or
files uploaded from the browser."""

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from django import forms

from data.models import DataType


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def clean(self, data: object, initial: object = None) -> list[object]:
        if isinstance(data, list | tuple):
            return [super(MultipleFileField, self).clean(item, initial) for item in data]
        return [super().clean(data, initial)] if data else []


@contextmanager
def folder_archive(files: list[Any]) -> Iterator[IO[bytes]]:
    """The browser's files as the folder archive the API takes (spooled: bounded memory)."""
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for upload in files:
                info = tarfile.TarInfo(upload.name.replace("\\", "/").lstrip("/"))
                info.size = upload.size
                tar.addfile(info, upload)
        archive.seek(0)
        yield archive


class DataAssetForm(forms.Form):
    name = forms.CharField(max_length=255)
    version = forms.CharField(max_length=64, required=False, help_text="Default: the next number.")
    type = forms.ChoiceField(choices=DataType.choices, initial=DataType.URI_FOLDER)
    path = forms.CharField(
        max_length=2000,
        required=False,
        help_text="azureml://datastores/<name>/paths/<path>, https://, s3:// or wasbs://; "
        "or leave empty and upload files.",
    )
    upload = MultipleFileField(
        required=False,
        widget=MultipleFileInput(attrs={"multiple": True}),
        help_text="Uploaded to the workspace's default datastore (uri_file: one file; "
        "a folder: these files in it).",
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        if bool(data.get("path")) == bool(data.get("upload")):
            raise forms.ValidationError("Give a path or upload files (one of them).")
        if data.get("type") == DataType.URI_FILE and len(data.get("upload") or []) > 1:
            self.add_error("upload", "A uri_file asset is one file.")
        return data


class DatastoreForm(forms.Form):
    """A datastore as Azure's YAML describes it: creates it, or updates the one of that
    name (credentials left out keep the stored ones)."""

    document = forms.CharField(
        label="Datastore YAML",
        widget=forms.Textarea(attrs={"rows": 9, "class": "code", "spellcheck": "false"}),
        help_text="name, type (azure_blob, s3, local), where it is, credentials. The storage "
        "is read before anything is kept; credentials are never shown back.",
    )
