// pair_style forcefield: see pair_forcefield.h for the two modes and the per-atom virial.
//
// The package (forcefield export ... format=pt2 target=local) takes (positions [N, 3],
// atomic_numbers [N], edge_index [2, E] (row 0 centre i, row 1 neighbour j), edge_shifts
// [E, 3] (edge vector = x_j - x_i + shift, A), energy_mask [N]) and returns (energy [],
// node_energy [N], forces [N, 3], atom_virial [N, 3, 3]) in float64, eV and A.  Its graph
// calls the forcefield:: operators, so their library (forcefield/ops/_C*.so) is loaded
// before the package: the path compiled in by `forcefield lammps build`, or the
// environment variable FORCEFIELD_OPS_LIBRARY.

#include "pair_forcefield.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <dlfcn.h>
#include <malloc.h>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <unordered_map>

#ifndef FORCEFIELD_OPS_LIBRARY
#define FORCEFIELD_OPS_LIBRARY ""
#endif

using namespace LAMMPS_NS;

namespace {

const char *const SYMBOLS[] = {
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P",
    "S", "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re",
    "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db",
    "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
constexpr int NUM_ELEMENTS = sizeof(SYMBOLS) / sizeof(SYMBOLS[0]);

// atomic number of an element symbol, 0 when it is none
long atomic_number(const std::string &symbol) {
  for (int z = 1; z <= NUM_ELEMENTS; ++z)
    if (symbol == SYMBOLS[z - 1]) return z;
  return 0;
}

std::string symbol_of(long z) {
  return (z >= 1 && z <= NUM_ELEMENTS) ? SYMBOLS[z - 1] : "?";
}

// "H, C, N, O", as forcefield's Python messages write a species list
std::string symbol_list(const std::vector<long> &numbers) {
  std::string out;
  for (long z : numbers) out += (out.empty() ? "" : ", ") + symbol_of(z);
  return out;
}

// the integers of a JSON list of integers ("[1, 6, 7, 8]")
std::vector<long> integer_list(const std::string &json) {
  std::vector<long> out;
  std::string token;
  for (char c : json + ",") {
    if (c >= '0' && c <= '9') {
      token += c;
    } else if (!token.empty()) {
      out.push_back(std::stol(token));
      token.clear();
    }
  }
  return out;
}

// dlopen the forcefield:: operator library once; "" or why it failed
std::string load_operator_library() {
  static bool loaded = false;
  if (loaded) return "";
  const char *env = std::getenv("FORCEFIELD_OPS_LIBRARY");
  const std::string path = (env && *env) ? env : FORCEFIELD_OPS_LIBRARY;
  if (path.empty())
    return "no operator library path was compiled in and FORCEFIELD_OPS_LIBRARY is not set";
  if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
    const char *why = dlerror();
    return "cannot load the operator library " + path + " (" + (why ? why : "?") + ")";
  }
  loaded = true;
  return "";
}

// Keep freed large blocks in the heap (glibc), as forcefield.runtime.tune_cpu_allocator does
// for the Python commands: else every large temporary tensor is page-faulted in again on
// the next step.  FORCEFIELD_NO_MALLOC_TUNING=1 opts out.
void tune_cpu_allocator() {
  static bool done = false;
  if (done || std::getenv("FORCEFIELD_NO_MALLOC_TUNING")) return;
  done = true;
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 1 << 30);    // glibc clamps it to its maximum (32 MiB)
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

// the first line of an exception's message, at most 300 characters
std::string first_line(const std::exception &error) {
  std::string text = error.what();
  text = text.substr(0, text.find('\n'));
  return text.size() > 300 ? text.substr(0, 300) + "..." : text;
}

}    // namespace

PairForceField::PairForceField(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial is the sum of the atom virials
  centroidstressflag = CENTROID_NOTAVAIL;
  tune_cpu_allocator();
}

PairForceField::~PairForceField()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairForceField::allocate()
{
  allocated = 1;
  const int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  for (int i = 1; i <= n; ++i)
    for (int j = i; j <= n; ++j) setflag[i][j] = 0;
}

void PairForceField::settings(int narg, char **arg)
{
  if (narg > 1 || (narg == 1 && strcmp(arg[0], "ghosts") != 0 && strcmp(arg[0], "images") != 0))
    error->all(FLERR, "pair_style forcefield takes one optional word, ghosts (any number of "
                      "MPI ranks) or images (one rank, no ghost atoms in the model): "
                      "pair_style forcefield [ghosts|images]");
  ghost_mode = !(narg == 1 && strcmp(arg[0], "images") == 0);
}

void PairForceField::load_package(const std::string &path)
{
  const std::string ops_problem = load_operator_library();
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loaded;
  try {
    loaded = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
  } catch (const std::exception &e) {
    if (!ops_problem.empty())
      error->all(FLERR, "pair_coeff: {} could not be loaded ({}); it may need the forcefield "
                        "operator library and {}: set FORCEFIELD_OPS_LIBRARY to "
                        "forcefield/ops/_C*.so or rebuild with 'forcefield lammps build'",
                 path, first_line(e), ops_problem);
    error->all(FLERR, "pair_coeff: {} could not be loaded ({}): it is not a forcefield model "
                      "package, or is damaged, or was built for another torch or CPU; write it "
                      "with 'forcefield export checkpoint=... output=model.pt2 format=pt2 "
                      "target=local'", path, first_line(e));
  }
  auto meta = loaded->get_metadata();
  if (meta.find("forcefield_package") == meta.end())
    error->all(FLERR, "pair_coeff: {} is an AOTInductor package without forcefield metadata; "
                      "write one with 'forcefield export ... format=pt2 target=local'", path);
  if (meta["forcefield_package"] != "1")
    error->all(FLERR, "pair_coeff: {} has package version {}, this pair style reads version "
                      "1; export it again with the forcefield this plugin was built from",
               path, meta["forcefield_package"]);
  const std::string target = meta.count("target") ? meta["target"] : "ase";
  if (target != "local")
    error->all(FLERR, "pair_coeff: {} is a target={} package (for the ASE calculator); LAMMPS "
                      "needs target=local: forcefield export checkpoint=... output=model.pt2 "
                      "format=pt2 target=local", path, target);
  if (meta["needs_ops"] == "true" && !ops_problem.empty())
    error->all(FLERR, "pair_coeff: {} calls the forcefield:: operators, but {}; set "
                      "FORCEFIELD_OPS_LIBRARY to forcefield/ops/_C*.so", path, ops_problem);
  package = std::move(loaded);
  model_path = path;
  single_precision = meta["dtype"] == "float32";
  r_max = std::stod(meta["r_max"]);
  num_interactions = std::stoi(meta["num_interactions"]);
  species = integer_list(meta["species"]);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair forcefield: {} ({}, {}, species {}, r_max {} A, {} layers)\n",
                   path, meta["architecture"], meta["dtype"], symbol_list(species), r_max,
                   num_interactions);
}

void PairForceField::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff for pair_style forcefield is 'pair_coeff * * model.pt2' "
                      "followed by {} element symbols, one per atom type", ntypes);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style forcefield must start with '* *' (one model "
                      "for all atom types)");
  load_package(arg[2]);
  type_to_z.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; ++t) {
    const std::string symbol = arg[2 + t];
    const long z = atomic_number(symbol);
    if (z == 0)
      error->all(FLERR, "pair_coeff: '{}' (atom type {}) is not an element symbol; give one "
                        "element per atom type, e.g. C H N O", symbol, t);
    bool known = false;
    for (long s : species) known = known || s == z;
    if (!known)
      error->all(FLERR, "pair_coeff: element {} (Z={}) of atom type {} is not in the species "
                        "of {} [{}]; map the types to those elements or use a model trained "
                        "on {}", symbol, z, t, model_path, symbol_list(species), symbol);
    type_to_z[t] = z;
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
}

void PairForceField::init_style()
{
  if (!package) error->all(FLERR, "pair_style forcefield needs 'pair_coeff * * model.pt2 ...'");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style forcefield works in metal units (eV, A); add 'units metal' "
                      "before the box is defined");
  if (ghost_mode) {
    if (force->newton_pair == 0)
      error->all(FLERR, "pair_style forcefield needs newton_pair on (forces on ghost atoms are "
                        "sent to their owners): remove 'newton off'");
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair_style forcefield needs a single communication cutoff: remove "
                        "'comm_modify mode multi'");
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
    // messages travel num_interactions edges: ghosts out to that many cutoffs (+ skin, as
    // the list is rebuilt only every few steps) make every local energy exact
    const double needed = num_interactions * r_max + neighbor->skin;
    if (comm->cutghostuser < needed) {
      comm->cutghostuser = needed;
      if (comm->me == 0)
        utils::logmesg(lmp, "pair forcefield: ghost atoms out to {:.4g} A ({} layers x {} A "
                            "+ skin {} A): comm cutoff raised to that\n",
                       needed, num_interactions, r_max, neighbor->skin);
    }
  } else {
    if (comm->nprocs > 1)
      error->all(FLERR, "pair_style forcefield images runs on one MPI rank; use pair_style "
                        "forcefield (ghosts) on {} ranks", comm->nprocs);
    if (atom->tag_enable == 0)
      error->all(FLERR, "pair_style forcefield images needs atom IDs (atom_modify id yes)");
    neighbor->add_request(this, NeighConst::REQ_FULL);
  }
}

double PairForceField::init_one(int, int)
{
  return r_max;
}

void PairForceField::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  // a rank without local atoms has no energy, hence no forces (the package needs one atom)
  if (atom->nlocal == 0) return;
  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int nnodes = ghost_mode ? nall : nlocal;
  const int nlists = list->inum + (ghost_mode ? list->gnum : 0);
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  // images mode: the local atom each ghost is an image of
  std::vector<int> owner_of_tag;
  if (!ghost_mode) {
    tagint max_tag = 0;
    for (int i = 0; i < nlocal; ++i) max_tag = std::max(max_tag, tag[i]);
    owner_of_tag.assign(max_tag + 1, -1);
    for (int i = 0; i < nlocal; ++i) owner_of_tag[tag[i]] = i;
  }

  const double cut2 = r_max * r_max;
  std::vector<int64_t> receivers, senders;
  std::vector<double> shifts;
  for (int ii = 0; ii < nlists; ++ii) {
    const int i = ilist[ii];
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cut2) continue;
      int node = j;
      if (!ghost_mode && j >= nlocal) {
        node = tag[j] < (tagint) owner_of_tag.size() ? owner_of_tag[tag[j]] : -1;
        if (node < 0)
          error->one(FLERR, "pair_style forcefield images: ghost atom {} has no local owner; "
                            "use pair_style forcefield (ghosts)", tag[j]);
      }
      receivers.push_back(i);
      senders.push_back(node);
      shifts.push_back(x[j][0] - x[node][0]);
      shifts.push_back(x[j][1] - x[node][1]);
      shifts.push_back(x[j][2] - x[node][2]);
    }
  }
  const int64_t nedges = (int64_t) receivers.size();

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor positions = torch::empty({nnodes, 3}, f64);
  torch::Tensor numbers = torch::empty({nnodes}, i64);
  torch::Tensor mask = torch::zeros({nnodes}, f64);
  double *pos = positions.data_ptr<double>();
  int64_t *z = numbers.data_ptr<int64_t>();
  for (int i = 0; i < nnodes; ++i) {
    pos[3 * i] = x[i][0];
    pos[3 * i + 1] = x[i][1];
    pos[3 * i + 2] = x[i][2];
    z[i] = type_to_z[type[i]];
  }
  mask.narrow(0, 0, nlocal).fill_(1.0);
  torch::Tensor edge_index = torch::empty({2, nedges}, i64);
  std::copy(receivers.begin(), receivers.end(), edge_index.data_ptr<int64_t>());
  std::copy(senders.begin(), senders.end(), edge_index.data_ptr<int64_t>() + nedges);
  torch::Tensor edge_shifts = torch::empty({nedges, 3}, f64);
  std::copy(shifts.begin(), shifts.end(), edge_shifts.data_ptr<double>());
  if (single_precision) {
    positions = positions.to(torch::kFloat32);
    edge_shifts = edge_shifts.to(torch::kFloat32);
    mask = mask.to(torch::kFloat32);
  }

  std::vector<torch::Tensor> out;
  try {
    out = package->run({positions, numbers, edge_index, edge_shifts, mask});
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style forcefield: the model {} failed: {}", model_path,
               first_line(e));
  }
  const torch::Tensor node_energy = out[1].to(torch::kFloat64).contiguous();
  const torch::Tensor forces = out[2].to(torch::kFloat64).contiguous();
  const torch::Tensor atom_virial = out[3].to(torch::kFloat64).contiguous();
  const double *fo = forces.data_ptr<double>();
  for (int i = 0; i < nnodes; ++i) {
    f[i][0] += fo[3 * i];
    f[i][1] += fo[3 * i + 1];
    f[i][2] += fo[3 * i + 2];
  }
  if (eflag_global) eng_vdwl += out[0].to(torch::kFloat64).item<double>();
  if (eflag_atom) {
    const double *e = node_energy.data_ptr<double>();
    for (int i = 0; i < nlocal; ++i) eatom[i] += e[i];
  }
  if (vflag_global || vflag_atom) {
    const double *w = atom_virial.data_ptr<double>();
    for (int i = 0; i < nnodes; ++i) {
      const double *a = w + 9 * i;
      const double v[6] = {a[0], a[4], a[8], 0.5 * (a[1] + a[3]), 0.5 * (a[2] + a[6]),
                           0.5 * (a[5] + a[7])};
      for (int k = 0; k < 6; ++k) {
        if (vflag_global) virial[k] += v[k];
        if (vflag_atom) vatom[i][k] += v[k];
      }
    }
  }
}
