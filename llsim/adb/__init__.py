"""Android phones over ADB: device queries (``llsim devices``), ``llsim hil doctor``, deployment of
a worker (:mod:`llsim.adb.deploy`), and a stand-in phone that speaks the real adb device protocol
(:mod:`llsim.adb.fakephone`, ``llsim hil fake-phone``) so all of it runs without a phone.
"""
