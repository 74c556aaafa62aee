/* A stand-in for winget.exe in the Wine tests of install.bat: it appends its arguments (tab-separated) to
   FAKE_WINGET_LOG and exits with FAKE_WINGET_RC (0 when unset), so a test can play each of winget's documented
   return codes. A real .exe, not a .cmd: install.bat runs winget like any program and must get its exit code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *log = getenv("FAKE_WINGET_LOG");
    const char *rc = getenv("FAKE_WINGET_RC");
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            for (int i = 1; i < argc; i++) fprintf(f, i > 1 ? "\t%s" : "%s", argv[i]);
            fputc('\n', f);
            fclose(f);
        }
    }
    if (argc > 1 && !strcmp(argv[1], "--version")) return 0;
    return rc ? (int)strtol(rc, NULL, 10) : 0;
}
