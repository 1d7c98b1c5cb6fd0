"""The CRM's Django TestCase suite (each class is one transaction, each test a savepoint in it).

    DJANGO_SETTINGS_MODULE=tests.realapps.python.django_app.settings \
        python -m django test tests.realapps.python.django_app.tests_suite --noinput

RA_SUITE_N_PLUS_ONE=1 makes test_page_shows_owner_names read owners lazily, one users query per contact.
"""
