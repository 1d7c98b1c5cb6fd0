"""A Django CRM of the real-application corpus: models, migrations, one-workload-per-command scripts, a tiny
view app served by gunicorn, and a TestCase suite (see corpus.py for what each workload stands for)."""
