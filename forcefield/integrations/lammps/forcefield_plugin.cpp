// Registers pair_style forcefield with LAMMPS's PLUGIN package (`plugin load <this .so>`).
//
// The plugin interface is a small C ABI (LAMMPS's src/PLUGIN/lammpsplugin.h, not among the
// headers a LAMMPS installation ships): the struct below has that layout.  LAMMPS calls
// lammpsplugin_init(lmp, handle, register_function) once when it loads the library.

#include "lammps.h"
#include "utils.h"

#include "pair_forcefield.h"

#ifndef FORCEFIELD_LAMMPS_VERSION
#define FORCEFIELD_LAMMPS_VERSION 0
#endif

using namespace LAMMPS_NS;

extern "C" {
typedef void *(lammpsplugin_factory1) (void *);
typedef void *(lammpsplugin_factory2) (void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

static Pair *forcefield_creator(LAMMPS *lmp)
{
  return new PairForceField(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  auto *host = static_cast<LAMMPS *>(lmp);
  // built against the headers of one LAMMPS (numeric version compiled in): another version
  // may lay out its classes differently, so say so plainly instead of crashing later
  if (FORCEFIELD_LAMMPS_VERSION != 0 && host->num_ver != FORCEFIELD_LAMMPS_VERSION)
    utils::logmesg(host, "WARNING: the forcefield plugin was built against LAMMPS {}, this is "
                         "LAMMPS {}; rebuild it with 'forcefield lammps build'\n",
                   FORCEFIELD_LAMMPS_VERSION, host->num_ver);
  lammpsplugin_t plugin;
  plugin.version = host->version;    // checked above by number
  plugin.style = "pair";
  plugin.name = "forcefield";
  plugin.info = "forcefield .pt2 package (target=local) as a pair style";
  plugin.author = "forcefield developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &forcefield_creator;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
