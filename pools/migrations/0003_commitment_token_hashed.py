"""Commitment tokens stored before this migration are plaintext: replace each with its
keyed hash (pools.tokens), the only form the commitment endpoint now accepts."""

from django.db import migrations

from pools.tokens import commitment_token_hash, commitment_token_is_hashed


def tokens_hash(apps, schema_editor):
    Backend = apps.get_model("pools", "Backend")
    for backend in Backend.objects.exclude(commitment_token=""):
        if not commitment_token_is_hashed(stored=backend.commitment_token):
            backend.commitment_token = commitment_token_hash(token=backend.commitment_token)
            backend.save(update_fields=["commitment_token"])


class Migration(migrations.Migration):

    dependencies = [
        ("pools", "0002_backend_commitment_token"),
    ]

    operations = [
        # A hash cannot be turned back into its token: going back leaves the hashes, and the
        # next sync of the config file (loadconfig, runproxy) writes the tokens again.
        migrations.RunPython(tokens_hash, migrations.RunPython.noop),
    ]
