// pair_style forcefield: a forcefield .pt2 package (target=local) as a LAMMPS pair style.
//
//   pair_style forcefield [ghosts|images]
//   pair_coeff * * model.pt2 C H N O        (one element per LAMMPS atom type)
//
// ghosts (default): the graph holds the local and the ghost atoms, edges among all of them
//   within r_max; the energy counts local atoms only, forces on ghosts are reverse-
//   communicated to their owners (newton_pair on).  Ghost atoms reach out to
//   num_interactions x r_max + skin (the pair style raises the comm cutoff to that), so
//   every message that reaches a local atom is exact: any number of MPI ranks.
// images: one MPI rank only; ghost neighbours are folded back onto the local atoms they
//   image (edge shift = x_ghost - x_owner), so the graph is the periodic structure itself,
//   as the ASE calculator builds it: no ghost atoms in the model, comm cutoff r_max + skin.
//
// Per-atom virial of atom i: half of -r_ij (x) dE/dr_ij over its edges ij and ji (LAMMPS
// stores the symmetric part, order xx yy zz xy xz yz); the global virial is their sum.

#ifndef LMP_PAIR_FORCEFIELD_H
#define LMP_PAIR_FORCEFIELD_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace LAMMPS_NS {

class PairForceField : public Pair {
 public:
  PairForceField(class LAMMPS *);
  ~PairForceField() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 protected:
  void allocate();
  void load_package(const std::string &path);

  bool ghost_mode = true;          // false: images mode (single rank)
  std::string model_path;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;
  bool single_precision = false;   // the package's dtype is float32
  double r_max = 0.0;
  int num_interactions = 1;
  std::vector<long> species;       // the package's atomic numbers
  std::vector<long> type_to_z;     // LAMMPS type (1-based) -> atomic number
};

}    // namespace LAMMPS_NS

#endif
