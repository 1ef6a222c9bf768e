"""The shared core every stage builds on: typed configs, errors, paths and outputs, the Ray
runtime, devices, blocks and bounded waits, the one file reader, the console and the stage
contract. Nothing here imports a stage, an engine or a dev tool."""
