# The study ledger: adoption, verdicts, what backends held, verification leases.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('affinity', '0003_alter_binding_instance_count'),
        ('pools', '0003_commitment_token_hashed'),
    ]

    operations = [
        migrations.CreateModel(
            name='Adoption',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('since_arg', models.CharField(blank=True, default='', max_length=8)),
                ('until_arg', models.CharField(blank=True, default='', max_length=8)),
                ('since', models.DateField()),
                ('until', models.DateField()),
                ('started_utc', models.DateTimeField()),
                ('finished_utc', models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.CreateModel(
            name='AdoptionWindow',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('first', models.DateField(blank=True, null=True)),
                ('last', models.DateField(blank=True, null=True)),
                ('undated', models.BooleanField(default=False)),
                ('studies', models.PositiveIntegerField(default=0)),
                ('capped', models.BooleanField(default=False)),
                ('done_utc', models.DateTimeField()),
            ],
        ),
        migrations.AddField(
            model_name='binding',
            name='adopted',
            field=models.BooleanField(db_default=False, default=False, help_text='Learnt from the backends (manage.py adopt), not traffic'),
        ),
        migrations.AddField(
            model_name='binding',
            name='held',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='binding',
            name='lease_until_utc',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='binding',
            name='verdict',
            field=models.CharField(choices=[('whole', 'Whole'), ('split', 'Split'), ('missing', 'Missing'), ('unverified', 'Unverified')], db_default='unverified', default='unverified', max_length=10),
        ),
        migrations.AddField(
            model_name='binding',
            name='verified_utc',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name='binding',
            index=models.Index(fields=['verdict', 'pool'], name='binding_verdict'),
        ),
        migrations.AddIndex(
            model_name='instancelocation',
            index=models.Index(fields=['pool', 'study_uid'], name='instance_location_study'),
        ),
        migrations.AddField(
            model_name='adoption',
            name='pool',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='pools.pool'),
        ),
        migrations.AddField(
            model_name='adoptionwindow',
            name='adoption',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='windows', to='affinity.adoption'),
        ),
    ]
