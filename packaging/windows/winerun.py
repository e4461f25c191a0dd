"""Running Windows programs under Wine from the interop tests.

A program that needs a desktop while Wine's `explorer.exe /desktop` is not
running starts it, and explorer inherits the program's Unix stdout and
stderr. With pipes there (subprocess.run(capture_output=True)), reading to
end of file waits for explorer, which lives as long as the Wine session:
the test hangs although the program has exited. So the output goes to
files and the wait is for the program alone.
"""
import subprocess
import tempfile


def run(cmd, timeout):
    """Like subprocess.run(cmd, capture_output=True, timeout=timeout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out.seek(0)
            err.seek(0)
            raise subprocess.TimeoutExpired(cmd, timeout, output=out.read(), stderr=err.read())
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
