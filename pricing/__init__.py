"""Price catalog, model-name resolution, cost computation and currency conversion.

Pure: nothing here opens a socket, reads the environment or looks at the clock.
"""
