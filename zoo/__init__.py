"""The command line of the zoo: `lightning-zoo fit|validate|test|predict --model NAME ...` (zoo.cli)."""
