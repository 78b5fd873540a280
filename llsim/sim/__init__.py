"""The discrete-event simulator (simpy): phones, Wi-Fi, the LinguaLinked ring pipeline."""
